//! The broker with static objects: a primary's server, a device's client, on loopback sockets
//! and real files (the seed's MyRoot/Status example in Rust).
mod common;
use common::*;
use octodb::Connection;
use octodb_broker::protocol::Op;
use octodb_broker::{
    Args, BrokerError, Client, Key, KeyPart, Notice, ObjRef, Server, StaticObject, Statics, Value,
};
use std::sync::{Arc, Mutex};
use std::time::Instant;

const SERVICE: &str = "broker";

/// The seed's example: a root with a version, a status reference and a `login` method, and a
/// plain `hello` call. Returns the server and its static objects.
fn seed_server(p: &Connection) -> (Server, Statics) {
    let server = Server::start(p, SERVICE).unwrap();
    let statics = Statics::default();
    statics.install(&server);
    let status = statics.add(
        vec!["status".into()],
        StaticObject::new("Status").field("health", "OK").field(
            "servers",
            Value::Tuple(vec!["joe".into(), "curly".into(), "moe".into()]),
        ),
    );
    let for_login = statics.clone();
    let for_bump = statics.clone();
    let status_key = status.clone();
    let root = statics.add(
        vec!["root".into()],
        StaticObject::new("MyRoot")
            .field("version_string", "0.12.3")
            .field(
                "version_tuple",
                Value::Tuple(vec![Value::Int(0), Value::Int(12), Value::Int(3)]),
            )
            .reference("status", Some(status))
            .method("login", move |_peer, args: Args| {
                let name = args
                    .positional
                    .first()
                    .and_then(Value::as_str)
                    .ok_or_else(|| BrokerError::Permission("login(name, hash)".into()))?
                    .to_string();
                let key = for_login.add(
                    vec!["user".into(), KeyPart::Str(name.clone())],
                    StaticObject::new("RealRoot").field("name", name),
                );
                Ok(Value::Ref(ObjRef::unsigned(key)))
            })
            .method("set_health", move |_peer, args: Args| {
                let health = args.positional.first().cloned().unwrap_or(Value::None);
                for_bump.update(&status_key, vec![("health".into(), health)], vec![])?;
                Ok(Value::None)
            }),
    );
    server.set_root(root);
    server.add_call(
        "hello",
        Arc::new(|_peer, args: Args| {
            let who = args
                .positional
                .first()
                .and_then(Value::as_str)
                .unwrap_or("nobody")
                .to_string();
            Ok(Value::Str(format!("hello {who}")))
        }),
    );
    (server, statics)
}

fn field(state: &octodb_broker::ObjectState, name: &str) -> Value {
    state.field(name).cloned().unwrap_or(Value::None)
}

fn status_ref(root: &octodb_broker::ObjectState) -> ObjRef {
    root.refs
        .iter()
        .find(|(n, _)| n == "status")
        .and_then(|(_, r)| r.clone())
        .expect("root has a status")
}

fn connected(net: &Net, p: &Connection, name: &str) -> (Connection, Client) {
    let d = net.device(name, p);
    ready(&d);
    let client = Client::connect(&d, SERVICE, DEADLINE).unwrap();
    (d, client)
}

#[test]
fn the_seed_example_root_status_login_and_hello() {
    let net = Net::new();
    let p = net.primary("p.db");
    let (_server, _statics) = seed_server(&p);
    let (_d, client) = connected(&net, &p, "d.db");
    let root = client.root().unwrap();
    assert_eq!(field(&root, "version_string"), Value::from("0.12.3"));
    assert_eq!(root.class, "MyRoot");
    assert_eq!(root.key.key, Key::of_static(["root"]));
    let status = client.fetch(&status_ref(&root)).unwrap();
    assert_eq!(field(&status, "health"), Value::from("OK"));
    let real = client
        .call_method(
            &root.key,
            "login",
            vec!["jane".into(), "hash".into()],
            vec![],
        )
        .unwrap();
    let Value::Ref(real) = real else {
        panic!("login returns a reference, got {real:?}")
    };
    assert_eq!(
        field(&client.fetch(&real).unwrap(), "name"),
        Value::from("jane")
    );
    assert_eq!(
        client.call("hello", vec!["you".into()]).unwrap(),
        Value::from("hello you")
    );
    // Errors come back with their kind and message.
    let err = client.call("nothing", vec![]).unwrap_err();
    assert!(
        matches!(&err, BrokerError::Remote { kind, message } if kind == "AttributeError" && message.contains("no call named `nothing`")),
        "{err:?}"
    );
}

#[test]
fn a_reference_is_fetched_once_and_shared() {
    let net = Net::new();
    let p = net.primary("p.db");
    let (_server, _statics) = seed_server(&p);
    let (_d, client) = connected(&net, &p, "d.db");
    let root = client.root().unwrap();
    let r = status_ref(&root);
    assert!(!client.is_cached(&r.key));
    let first = client.fetch(&r).unwrap();
    assert!(client.is_cached(&r.key));
    let second = client.fetch(&r).unwrap();
    assert!(
        Arc::ptr_eq(&first, &second),
        "one object per key, no second request"
    );
}

#[test]
fn an_invalidation_reaches_the_client_and_orders_before_the_reply() {
    let net = Net::new();
    let p = net.primary("p.db");
    let (_server, statics) = seed_server(&p);
    let (_d, client) = connected(&net, &p, "d.db");
    let notices: Arc<Mutex<Vec<Notice>>> = Default::default();
    let seen = notices.clone();
    client.set_listener(move |n| seen.lock().unwrap().push(n));
    let root = client.root().unwrap();
    let r = status_ref(&root);
    client.fetch(&r).unwrap();

    // The server changes it on its own: the client is told (and measures how fast).
    let before = client.epoch();
    let started = Instant::now();
    statics
        .update(&r.key, vec![("health".into(), "poor".into())], vec![])
        .unwrap();
    wait_until("the invalidation arrives", || {
        (client.epoch() != before).then_some(())
    });
    let latency = started.elapsed();
    eprintln!("invalidation latency: {latency:?}");
    assert!(!client.is_cached(&r.key));
    assert_eq!(
        field(&client.fetch(&r).unwrap(), "health"),
        Value::from("poor")
    );
    wait_until("the listener hears it", || {
        notices
            .lock()
            .unwrap()
            .contains(&Notice::Invalidated(vec![r.key.clone()]))
            .then_some(())
    });

    // A call that changes it: when it returns, the cache is already fresh.
    for i in 0..20 {
        client.fetch(&r).unwrap();
        let health = format!("h{i}");
        client
            .call_method(&root.key, "set_health", vec![health.clone().into()], vec![])
            .unwrap();
        assert!(
            !client.is_cached(&r.key),
            "round {i}: the reply came before the invalidation"
        );
        assert_eq!(
            field(&client.fetch(&r).unwrap(), "health"),
            Value::from(health)
        );
    }
}

#[test]
fn a_deleted_object_is_not_found_and_forged_keys_are_refused() {
    let net = Net::new();
    let p = net.primary("p.db");
    let (server, statics) = seed_server(&p);
    let (_d, client) = connected(&net, &p, "d.db");
    let root = client.root().unwrap();
    let r = status_ref(&root);
    client.fetch(&r).unwrap();
    statics.delete(&r.key).unwrap();
    wait_until("the deletion is told", || {
        (!client.is_cached(&r.key)).then_some(())
    });
    let err = client.fetch(&r).unwrap_err();
    assert!(matches!(err, BrokerError::NotFound(_)), "{err:?}");

    // A key the server never handed out: guessed, or with another key's code.
    let guessed = ObjRef {
        key: Key::of_static(["user", "root"]),
        code: root.key.code.clone(),
    };
    let err = client.fetch(&guessed).unwrap_err();
    assert!(
        matches!(&err, BrokerError::Permission(m) if m.contains("forged")),
        "{err:?}"
    );
    let unsigned = ObjRef::unsigned(Key::of_static(["root"]));
    // (Asked of the server directly: the client's cache holds the root already.)
    assert!(matches!(
        client.request(Op::Fetch { target: unsigned }),
        Err(BrokerError::Permission(_))
    ));
    // The server's own reference for a key is what it hands out.
    assert_eq!(server.reference(Key::of_static(["root"])), root.key);
    // A forged reference inside a call's arguments is refused too.
    let err = client.call("hello", vec![Value::Ref(guessed)]).unwrap_err();
    assert!(matches!(err, BrokerError::Permission(_)), "{err:?}");
}

#[test]
fn hostile_frames_end_only_that_client() {
    let net = Net::new();
    let p = net.primary("p.db");
    let (server, _statics) = seed_server(&p);
    let (d, client) = connected(&net, &p, "d.db");
    let mut raw = d.open_channel(SERVICE).unwrap();
    for garbage in [&b""[..], &[0xff; 40][..], &[0, 0, 0, 9, 9, 9][..]] {
        let _ = octodb::api::channel::block_on(raw.send(garbage));
    }
    // A request whose values are malformed gets an error reply, not a crash.
    let bad_args = octodb_broker::protocol::encode(&octodb_broker::protocol::Request {
        id: 1,
        op: Op::Call {
            target: None,
            method: "hello".into(),
            args: vec![0x07, 0xff, 0xff, 0xff, 0x0f],
        },
    });
    let mut raw2 = d.open_channel(SERVICE).unwrap();
    let reply = octodb::api::channel::block_on(async {
        raw2.send(&bad_args).await?;
        raw2.recv().await
    })
    .unwrap();
    let frame: octodb_broker::protocol::ServerFrame =
        octodb_broker::protocol::decode(&reply).unwrap();
    assert!(
        matches!(&frame, octodb_broker::protocol::ServerFrame::Reply { result: Err(e), .. } if e.kind == "ValueError"),
        "{frame:?}"
    );
    // The well-behaved client and the server go on.
    assert_eq!(
        client.call("hello", vec!["still".into()]).unwrap(),
        Value::from("hello still")
    );
    assert!(server.clients() >= 1);
}

#[test]
fn an_export_limited_to_a_user_is_refused_to_others() {
    let net = Net::new();
    let p = Connection::open(&net.primary_uri("p.db", 0, Some("user"))).unwrap();
    p.set_auth_callback(octodb::auth::Action::UserSignup, |r| {
        match r.data.as_deref() {
            Some("ann") => octodb::auth::Decision::User(10),
            _ => octodb::auth::Decision::User(20),
        }
    })
    .unwrap();
    let server = Server::start(&p, SERVICE).unwrap();
    let statics = Statics::default();
    statics.install(&server);
    let secret = statics.add(
        vec!["diary".into()],
        StaticObject::new("Diary")
            .field("text", "ann's")
            .only_for(|peer| peer.user_id == 10),
    );
    let root = statics.add(
        vec!["root".into()],
        StaticObject::new("Root").reference("diary", Some(secret.clone())),
    );
    server.set_root(root);
    let mut clients = Vec::new();
    for (name, user) in [("ann", 10), ("bob", 20)] {
        let d = net.device(&format!("{name}.db"), &p);
        d.execute(&format!("PRAGMA user_signup='{name}'"), [])
            .unwrap();
        assert_eq!(ready(&d).user_id, Some(user));
        let c = Client::connect(&d, SERVICE, DEADLINE).unwrap();
        clients.push((d, c));
    }
    let diary_of = |c: &Client| {
        let root = c.root().unwrap();
        let r = root.refs[0].1.clone().unwrap();
        c.fetch(&r)
    };
    assert_eq!(
        field(&diary_of(&clients[0].1).unwrap(), "text"),
        Value::from("ann's")
    );
    let err = diary_of(&clients[1].1).unwrap_err();
    assert!(
        matches!(&err, BrokerError::Permission(m) if m.contains("not shared with user 20")),
        "{err:?}"
    );
    // Only the user who holds it hears of its change.
    let bob_epoch = clients[1].1.epoch();
    statics
        .update(&secret, vec![("text".into(), "new".into())], vec![])
        .unwrap();
    wait_until("ann is told", || {
        (!clients[0].1.is_cached(&secret)).then_some(())
    });
    assert_eq!(clients[1].1.epoch(), bob_epoch, "bob is told nothing");
}

#[test]
fn a_client_keeps_its_references_across_a_server_restart() {
    let net = Net::new();
    let p = net.primary("p.db");
    let port = p.bound_addrs()[0].port();
    let (server, statics) = seed_server(&p);
    let (_d, client) = connected(&net, &p, "d.db");
    let root = client.root().unwrap();
    let r = status_ref(&root);
    assert_eq!(
        field(&client.fetch(&r).unwrap(), "health"),
        Value::from("OK")
    );
    let notices: Arc<Mutex<Vec<Notice>>> = Default::default();
    let seen = notices.clone();
    client.set_listener(move |n| seen.lock().unwrap().push(n));

    // The primary goes away with its server, and comes back on the same port.
    server.stop(&p).unwrap();
    drop((server, statics, p));
    let p = wait_until("the primary reopens on its port", || {
        Connection::open(&net.primary_uri("p.db", port, None)).ok()
    });
    let (_server, statics) = seed_server(&p);
    wait_until("the client reconnects and drops its cache", || {
        notices
            .lock()
            .unwrap()
            .contains(&Notice::Reconnected)
            .then_some(())
    });
    // The old references still work, without a new root call.
    statics
        .update(&r.key, vec![("health".into(), "restarted".into())], vec![])
        .unwrap();
    assert!(!client.is_cached(&r.key));
    let status = wait_until("the status is fetched again", || client.fetch(&r).ok());
    assert_eq!(field(&status, "health"), Value::from("restarted"));
    let result = client
        .call_method(&root.key, "set_health", vec!["fine".into()], vec![])
        .unwrap();
    assert_eq!(result, Value::None);
}

/// Not a check: how long a call takes on this machine (`cargo test --release -- --ignored
/// --nocapture call_round_trip`).
#[test]
#[ignore]
fn call_round_trip() {
    let net = Net::new();
    let p = net.primary("p.db");
    let (_server, _statics) = seed_server(&p);
    let (_d, client) = connected(&net, &p, "d.db");
    let root = client.root().unwrap();
    for _ in 0..2 {
        let n = 5000;
        let started = Instant::now();
        for _ in 0..n {
            client.call("hello", vec!["x".into()]).unwrap();
        }
        eprintln!("plain call: {:?}", started.elapsed() / n);
        let started = Instant::now();
        for _ in 0..n {
            client
                .request(Op::Fetch {
                    target: root.key.clone(),
                })
                .unwrap();
        }
        eprintln!("fetch: {:?}", started.elapsed() / n);
    }
}

/// A loader whose fetch waits until the test lets it go, answering the version it read first.
struct Gate {
    version: Mutex<i64>,
    reading: std::sync::mpsc::SyncSender<()>,
    go: Mutex<std::sync::mpsc::Receiver<()>>,
}

impl octodb_broker::Loader for Gate {
    fn fetch(
        &self,
        _peer: &octodb_broker::Peer,
        key: &Key,
    ) -> Result<octodb_broker::ObjectState, BrokerError> {
        let version = *self.version.lock().unwrap();
        let _ = self.reading.send(());
        let _ = self.go.lock().unwrap().recv();
        Ok(octodb_broker::ObjectState {
            key: ObjRef::unsigned(key.clone()),
            class: "Gated".into(),
            fields: vec![("version".into(), Value::Int(version))],
            refs: vec![],
            backrefs: vec![],
            methods: vec![],
        })
    }
}

#[test]
fn a_change_made_while_an_object_is_read_is_not_missed() {
    let net = Net::new();
    let p = net.primary("p.db");
    let server = Server::start(&p, SERVICE).unwrap();
    let (reading_tx, reading_rx) = std::sync::mpsc::sync_channel(1);
    let (go_tx, go_rx) = std::sync::mpsc::sync_channel(1);
    let gate = Arc::new(Gate {
        version: Mutex::new(1),
        reading: reading_tx,
        go: Mutex::new(go_rx),
    });
    server.add_loader("gated", gate.clone());
    let key = Key::new("gated", [KeyPart::Int(1)]);
    server.set_root(key.clone());
    let (_d, client) = connected(&net, &p, "d.db");
    let fetching = std::thread::spawn({
        let client = client.clone();
        move || client.root()
    });
    reading_rx.recv().unwrap();
    // Changed after the server read version 1, before its reply went out.
    *gate.version.lock().unwrap() = 2;
    server.invalidate(std::slice::from_ref(&key));
    go_tx.send(()).unwrap();
    let first = fetching.join().unwrap().unwrap();
    assert_eq!(first.field("version"), Some(&Value::Int(1)));
    wait_until("the client drops the copy read before the change", || {
        (!client.is_cached(&key)).then_some(())
    });
    go_tx.send(()).unwrap();
    assert_eq!(
        client.root().unwrap().field("version"),
        Some(&Value::Int(2))
    );
}

/// The reply-after-invalidation order holds with many threads at once, whichever thread
/// writes the frames (the handler's own, or the session's writing task): while other callers
/// keep the connection busy and the server keeps announcing changes of another object the
/// client holds, every call that changed the status returns with the status already dropped
/// from the client's cache.
#[test]
fn replies_follow_invalidations_among_concurrent_calls_and_announcements() {
    let net = Net::new();
    let p = net.primary("p.db");
    let (_server, statics) = seed_server(&p);
    let (_d, client) = connected(&net, &p, "d.db");
    let root = client.root().unwrap();
    let status = status_ref(&root);
    let Value::Ref(ann) = client
        .call_method(&root.key, "login", vec!["ann".into()], vec![])
        .unwrap()
    else {
        panic!("login returns a reference");
    };
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let running = |f: Box<dyn Fn() + Send>| {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                f();
            }
        })
    };
    let mut busy = Vec::new();
    for i in 0..4 {
        let c = client.clone();
        busy.push(running(Box::new(move || {
            let answer = c.call("hello", vec![format!("caller {i}").into()]).unwrap();
            assert_eq!(answer, Value::Str(format!("hello caller {i}")));
        })));
    }
    // The client holds `ann` again and again; the server changes it again and again.
    let c = client.clone();
    let held = ann.clone();
    busy.push(running(Box::new(move || {
        c.fetch(&held).unwrap();
    })));
    let (s, key) = (statics.clone(), ann.key.clone());
    let n = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let count = n.clone();
    busy.push(running(Box::new(move || {
        let i = count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        s.update(&key, vec![("n".into(), Value::Int(i as i64))], vec![])
            .unwrap();
        std::thread::yield_now();
    })));

    for round in 0..200 {
        client.fetch(&status).unwrap();
        client
            .call_method(
                &root.key,
                "set_health",
                vec![format!("h{round}").into()],
                vec![],
            )
            .unwrap();
        assert!(
            !client.is_cached(&status.key),
            "round {round}: the reply came before the invalidation"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in busy {
        t.join().expect("a busy thread failed");
    }
    assert!(
        n.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "the server announced changes meanwhile"
    );
    assert_eq!(
        field(&client.fetch(&status).unwrap(), "health"),
        Value::from("h199")
    );
}
