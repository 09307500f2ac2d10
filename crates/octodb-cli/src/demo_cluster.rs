//! `octodb demo --cluster`: three primaries as a Raft cluster and a device on loopback; the
//! leader stops, the device finds the new leader and goes on, and the stopped primary comes
//! back and catches up.

use crate::demo::{count, demo_dir, wait_until};
use anyhow::Context;
use octodb::Connection;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(30);

struct Primaries {
    dir: std::path::PathBuf,
    ports: [u16; 3],
    nodes: [Option<Connection>; 3],
}

impl Primaries {
    fn uri(&self, i: usize, join: bool) -> String {
        let mut uri = format!(
            "file:{}?node=primary&bind=tcp://127.0.0.1:{}",
            self.dir.join(format!("primary{}.db", i + 1)).display(),
            self.ports[i]
        );
        if join {
            uri.push_str(&format!("&connect=tcp://127.0.0.1:{}", self.ports[0]));
        }
        uri
    }

    fn role(&self, i: usize) -> String {
        self.nodes[i]
            .as_ref()
            .and_then(|p| p.sync_status().ok())
            .and_then(|s| s.cluster)
            .map_or_else(|| "stopped".into(), |c| c.role)
    }

    fn leader(&self) -> Option<usize> {
        (0..3).find(|&i| self.role(i) == "leader")
    }

    fn print_roles(&self) {
        for i in 0..3 {
            println!(
                "   primary{} (tcp://127.0.0.1:{}): {}",
                i + 1,
                self.ports[i],
                self.role(i)
            );
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub fn run(dir: Option<&Path>) -> anyhow::Result<ExitCode> {
    let (_temp, dir) = demo_dir(dir)?;
    let dir: &Path = &dir;
    let started = Instant::now();
    println!(
        "octodb demo --cluster: three primaries (a Raft cluster) and a device, over loopback, in {}\n",
        dir.display()
    );
    let mut p = Primaries {
        dir: dir.to_path_buf(),
        ports: [free_port()?, free_port()?, free_port()?],
        nodes: [None, None, None],
    };
    let first = Connection::open(&p.uri(0, false))?;
    first.execute(
        "CREATE TABLE todos(id INTEGER PRIMARY KEY, title TEXT NOT NULL, row_owner)",
        [],
    )?;
    p.nodes[0] = Some(first);
    p.nodes[1] = Some(Connection::open(&p.uri(1, true))?);
    p.nodes[2] = Some(Connection::open(&p.uri(2, true))?);
    wait_until("three voting primaries", || {
        let status = p.nodes[0].as_ref().context("primary1")?.sync_status()?;
        Ok(status
            .cluster
            .is_some_and(|c| c.members.iter().filter(|m| m.voter).count() == 3))
    })?;
    println!("1. primary1 formed the cluster; primary2 and primary3 joined it (connect=primary1):");
    p.print_roles();

    let device = Connection::open(&format!(
        "file:{}?node=secondary&connect=tcp://127.0.0.1:{}",
        dir.join("device.db").display(),
        p.ports[0]
    ))?;
    device.wait_until_ready(DEADLINE)?;
    wait_until("the device to hear of the primaries", || {
        Ok(device.sync_status()?.primaries.len() == 3)
    })?;
    device.execute(
        "INSERT INTO todos(title) VALUES ('written before the fail-over')",
        [],
    )?;
    wait_until("the device's first row accepted", || {
        Ok(device.sync_status()?.outbox_len == 0)
    })?;
    println!(
        "\n2. A device joined through primary1 only, heard of all three primaries, and wrote a \
         row;\n   the leader accepted it once a majority of the primaries held it."
    );

    let leader = p.leader().context("a leader")?;
    let stopped_at = Instant::now();
    drop(p.nodes[leader].take());
    println!("\n3. The leader, primary{}, stops.", leader + 1);
    device.execute(
        "INSERT INTO todos(title) VALUES ('written during the fail-over')",
        [],
    )?;
    wait_until("the device's row accepted by a new leader", || {
        Ok(device.sync_status()?.outbox_len == 0)
    })?;
    let new_leader = p.leader().context("a new leader")?;
    println!(
        "   The other two elected primary{} leader; the device found it and its new row was \
         accepted\n   {:.2} s after the stop:",
        new_leader + 1,
        stopped_at.elapsed().as_secs_f64()
    );
    p.print_roles();

    p.nodes[leader] = Some(Connection::open(&p.uri(leader, false))?);
    let back = p.nodes[leader].as_ref().context("the restarted primary")?;
    wait_until("the restarted primary to catch up", || {
        Ok(count(back, "SELECT count(*) FROM todos")? == 2)
    })?;
    println!(
        "\n4. primary{} starts again: its stored membership brings it back as a follower, and \
         it catches up:",
        leader + 1
    );
    p.print_roles();
    println!("\n5. Every primary and the device hold the same rows:");
    for i in 0..3 {
        let node = p.nodes[i].as_ref().context("a primary")?;
        println!(
            "   primary{}: {} rows",
            i + 1,
            count(node, "SELECT count(*) FROM todos")?
        );
    }
    println!(
        "   device: {} rows\nDone in {:.2?}.",
        count(&device, "SELECT count(*) FROM todos")?,
        started.elapsed()
    );
    Ok(ExitCode::SUCCESS)
}
