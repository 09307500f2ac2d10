//! Requests to join decided once, by any primary whose process has callbacks (issue
//! "Cluster", item 5): the leader records a device's request, a follower's callback decides
//! it, and the decision reaches every primary through the log. A follower's
//! `PRAGMA authorize_*` goes to the leader too. Real files, real loopback sockets.

mod common;

use common::*;
use octodb::auth::{Action, AuthRequest, Decision};
use octodb::{Connection, Role};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

fn auth_state_on(c: &Cluster, primary: &str, key: &str) -> String {
    file_rows(
        &c.path(primary),
        &format!("SELECT auth_state FROM _octo_nodes WHERE pubkey = '{key}'"),
    )
    .concat()
    .concat()
}

#[test]
fn a_followers_callback_decides_what_waits_at_the_leader_once() {
    let c = Cluster::new();
    let (p1, p2, p3) = three_auth_primaries(&c, |_| {});

    // The leader's process has no callback; the second primary's approves, while told to.
    let asked = Arc::new(AtomicUsize::new(0));
    let approve = Arc::new(AtomicBool::new(true));
    let (a, ok) = (asked.clone(), approve.clone());
    p2.set_auth_callback(Action::NewNode, move |_r: &AuthRequest| {
        a.fetch_add(1, Ordering::SeqCst);
        match ok.load(Ordering::SeqCst) {
            true => Decision::Node(Role::Secondary),
            false => Decision::Pending,
        }
    })
    .unwrap();
    let d = c.device("d.db", &p1);
    ready(&d);
    assert_eq!(asked.load(Ordering::SeqCst), 1, "asked once");
    let key = d.public_key();
    for primary in ["p.db", "p2.db", "p3.db"] {
        wait_until(&format!("{primary} holds the decision"), || {
            (auth_state_on(&c, primary, &key) == "Text(\"approved\")").then_some(())
        });
    }
    d.execute("INSERT INTO t(v) VALUES ('approved by a follower')", [])
        .unwrap();
    wait_outbox_empty(&d);

    // The callback defers the next one; a PRAGMA on the third primary decides it.
    approve.store(false, Ordering::SeqCst);
    let d2 = c.device("d2.db", &p1);
    d2.wait_for(DEADLINE, |s| s.auth_state.as_deref() == Some("pending"))
        .expect("the second device waits");
    wait_until("the follower's callback was asked", || {
        (asked.load(Ordering::SeqCst) == 2).then_some(())
    });
    p3.execute(
        &format!("PRAGMA authorize_node='{}:secondary'", d2.public_key()),
        [],
    )
    .expect("a follower's PRAGMA goes to the leader");
    ready(&d2);
    assert_eq!(asked.load(Ordering::SeqCst), 2, "not asked again");
    // A key no node presented is still an error there, said by the leader.
    let unseen = Connection::open(&device_uri(&c.path("d3.db"), "127.0.0.1:9")).unwrap();
    let refused = p3
        .execute(
            &format!("PRAGMA authorize_node='{}:secondary'", unseen.public_key()),
            [],
        )
        .expect_err("an unknown key");
    assert!(
        refused.to_string().contains("no node has presented"),
        "{refused}"
    );
}

#[test]
fn a_waiting_request_carries_over_to_the_next_leader() {
    let c = Cluster::new();
    let (p1, p2, p3) = three_auth_primaries(&c, |_| {});
    // No process has a callback: the device's request waits at the leader.
    let all = [&p1, &p2, &p3]
        .map(|p| format!("tcp://{}", addr_of(p)))
        .join(",");
    let d = Connection::open(&format!(
        "file:{}?node=secondary&connect={all}",
        c.path("d.db").display()
    ))
    .unwrap();
    d.wait_for(DEADLINE, |s| s.auth_state.as_deref() == Some("pending"))
        .expect("the device waits");
    let key = d.public_key();
    for primary in ["p2.db", "p3.db"] {
        wait_until(&format!("{primary} holds the waiting request"), || {
            (auth_state_on(&c, primary, &key) == "Text(\"pending\")").then_some(())
        });
    }
    // The leader goes; whichever primary leads next, the third one's callback decides.
    drop(p1);
    let asked = Arc::new(AtomicUsize::new(0));
    let a = asked.clone();
    p3.set_auth_callback(Action::NewNode, move |_r: &AuthRequest| {
        a.fetch_add(1, Ordering::SeqCst);
        Decision::Node(Role::Secondary)
    })
    .unwrap();
    ready(&d);
    assert_eq!(asked.load(Ordering::SeqCst), 1);
    for primary in ["p2.db", "p3.db"] {
        wait_until(&format!("{primary} holds the decision"), || {
            (auth_state_on(&c, primary, &key) == "Text(\"approved\")").then_some(())
        });
    }
    drop(p2);
}
