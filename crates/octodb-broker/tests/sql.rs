//! SQL tables exported as classes: access modes, hidden columns, search, foreign keys,
//! row_owner rules for a device's user, savepoints, and invalidation from the change feed.
mod common;
use common::*;
use octodb::auth::{Action, Decision};
use octodb::Connection;
use octodb_broker::sql::follow_feed;
use octodb_broker::{Access, BrokerError, Client, Notice, Server, SqlTables, Value};
use std::sync::{Arc, Mutex};

const SERVICE: &str = "broker";

struct Setup {
    net: Net,
    p: Connection,
    tables: Arc<SqlTables>,
    _server: Server,
}

/// A primary (auth=user: "ann" is user 10, "bob" user 20) with lists, todos (a hidden column,
/// a foreign key) and a read-only catalog, exported on its broker.
fn setup() -> Setup {
    let net = Net::new();
    let uri = net.primary_uri("p.db", 0, Some("user"));
    let p = Connection::open(&uri).unwrap();
    p.set_auth_callback(Action::UserSignup, |r| match r.data.as_deref() {
        Some("ann") => Decision::User(10),
        _ => Decision::User(20),
    })
    .unwrap();
    p.execute_batch(
        "CREATE TABLE lists(id INTEGER PRIMARY KEY, name TEXT, row_owner);
         CREATE TABLE todos(id INTEGER PRIMARY KEY, title TEXT, secret TEXT,
                            list_id INTEGER REFERENCES lists(id), row_owner);
         CREATE TABLE catalog(id INTEGER PRIMARY KEY, name TEXT, row_owner);
         INSERT INTO lists(id, name, row_owner) VALUES (1, 'ann''s', 10), (2, 'public', '*');
         INSERT INTO todos(id, title, secret, list_id, row_owner)
              VALUES (1, 'One', 's1', 1, 10), (2, 'Two', 's2', 1, 10), (3, 'Three', 's3', 2, '*'),
                     (4, 'Bob''s', 's4', NULL, 20);
         INSERT INTO catalog(name, row_owner) VALUES ('a', '*'), ('b', '*'), ('b', '*');",
    )
    .unwrap();
    let server = Server::start(&p, SERVICE).unwrap();
    let tables = SqlTables::new(Connection::open(&uri).unwrap(), &server);
    tables
        .export("lists", "lists", Access::ReadWrite, &[])
        .unwrap();
    tables
        .export("todos", "todos", Access::ReadWrite, &["secret"])
        .unwrap();
    tables
        .export("catalog", "catalog", Access::ReadOnly, &[])
        .unwrap();
    follow_feed(&server, Connection::open(&uri).unwrap()).unwrap();
    Setup {
        net,
        p,
        tables,
        _server: server,
    }
}

fn user(s: &Setup, name: &str) -> (Connection, Client) {
    let d = s.net.device(&format!("{name}.db"), &s.p);
    d.execute(&format!("PRAGMA user_signup='{name}'"), [])
        .unwrap();
    ready(&d);
    let c = Client::connect(&d, SERVICE, DEADLINE).unwrap();
    (d, c)
}

fn obj(v: &Value) -> &octodb_broker::ObjectState {
    match v {
        Value::Object(o) => o,
        other => panic!("expected an object, got {other:?}"),
    }
}

fn eq(name: &str, v: impl Into<Value>) -> Vec<(String, Value)> {
    vec![(name.to_string(), v.into())]
}

#[test]
fn read_only_exports_refuse_writes_and_leave_the_database_alone() {
    let s = setup();
    let (_d, ann) = user(&s, "ann");
    assert_eq!(ann.count("catalog", vec![]).unwrap(), 3);
    let a = ann.get("catalog", eq("name", "a")).unwrap();
    let err = ann.create("catalog", eq("name", "c")).unwrap_err();
    assert!(
        matches!(&err, BrokerError::Permission(m) if m.contains("read-only")),
        "{err:?}"
    );
    let key = &obj(&a).key;
    let err = ann
        .update(key, vec![("name".into(), "a".into(), "z".into())])
        .unwrap_err();
    assert!(matches!(err, BrokerError::Permission(_)), "{err:?}");
    assert!(matches!(ann.delete(key), Err(BrokerError::Permission(_))));
    assert_eq!(count(&s.p, "SELECT count(*) FROM catalog"), 3);
    assert_eq!(
        count(&s.p, "SELECT count(*) FROM catalog WHERE name = 'a'"),
        1
    );
}

#[test]
fn hidden_columns_are_never_sent_and_cannot_be_searched() {
    let s = setup();
    let (_d, ann) = user(&s, "ann");
    let one = ann.get("todos", eq("title", "One")).unwrap();
    let one = obj(&one);
    assert!(one.field("secret").is_none(), "{one:?}");
    assert_eq!(one.field("title"), Some(&Value::from("One")));
    let err = ann.find("todos", eq("secret", "s1"), None).unwrap_err();
    assert!(matches!(err, BrokerError::Remote { .. }), "{err:?}");
}

#[test]
fn search_get_find_count_and_their_errors() {
    let s = setup();
    let (_d, ann) = user(&s, "ann");
    let err = ann.get("catalog", eq("name", "zzz")).unwrap_err();
    assert!(
        matches!(&err, BrokerError::Remote { kind, .. } if kind == "NoData"),
        "{err:?}"
    );
    let err = ann.get("catalog", eq("name", "b")).unwrap_err();
    assert!(
        matches!(&err, BrokerError::Remote { kind, message } if kind == "ManyData" && message.contains("2 objects")),
        "{err:?}"
    );
    assert_eq!(
        ann.find("catalog", eq("name", "b"), Some(1)).unwrap().len(),
        1
    );
    assert_eq!(ann.count("catalog", eq("name", "b")).unwrap(), 2);
    // Many results come as references, few whole.
    s.p.execute_batch(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 30)
         INSERT INTO catalog(name, row_owner) SELECT 'many', '*' FROM n",
    )
    .unwrap();
    let many = ann.find("catalog", eq("name", "many"), None).unwrap();
    assert_eq!(many.len(), 30);
    assert!(many.iter().all(|v| matches!(v, Value::Ref(_))));
    let few = ann.find("catalog", eq("name", "many"), Some(5)).unwrap();
    assert!(few.iter().all(|v| matches!(v, Value::Object(_))));
}

#[test]
fn updates_carry_the_old_value_and_searches_are_told_of_changes() {
    let s = setup();
    let (_d, ann) = user(&s, "ann");
    let notices: Arc<Mutex<Vec<Notice>>> = Default::default();
    let seen = notices.clone();
    ann.set_listener(move |n| seen.lock().unwrap().push(n));
    let two = ann.get("todos", eq("title", "Two")).unwrap();
    let key = obj(&two).key.clone();
    // Someone else's view of it is stale: refused.
    let err = ann
        .update(&key, vec![("title".into(), "Zwei".into(), "Two2".into())])
        .unwrap_err();
    assert!(matches!(err, BrokerError::Conflict(_)), "{err:?}");
    ann.update(&key, vec![("title".into(), "Two".into(), "Two2".into())])
        .unwrap();
    assert_eq!(
        count(&s.p, "SELECT count(*) FROM todos WHERE title = 'Two2'"),
        1
    );
    // Noted before the reply came back (listeners hear it on their own thread).
    assert!(ann.take_changes().classes.contains("todos"));
    wait_until("the listener hears of the class", || {
        notices
            .lock()
            .unwrap()
            .contains(&Notice::ClassChanged("todos".into()))
            .then_some(())
    });
    assert!(ann
        .find("todos", eq("title", "Two"), None)
        .unwrap()
        .is_empty());
    assert_eq!(
        ann.find("todos", eq("title", "Two2"), None).unwrap().len(),
        1
    );
}

#[test]
fn row_changes_by_sql_invalidate_without_any_broker_call() {
    let s = setup();
    let (d, ann) = user(&s, "ann");
    let one = ann.get("todos", eq("title", "One")).unwrap();
    let key = obj(&one).key.clone();
    assert_eq!(
        ann.fetch(&key).unwrap().field("title"),
        Some(&Value::from("One"))
    );
    assert!(ann.is_cached(&key.key));
    // The backend's own SQL.
    s.p.execute("UPDATE todos SET title = 'Uno' WHERE id = 1", [])
        .unwrap();
    wait_until("the feed invalidates the row", || {
        (!ann.is_cached(&key.key)).then_some(())
    });
    assert_eq!(
        ann.fetch(&key).unwrap().field("title"),
        Some(&Value::from("Uno"))
    );
    // The device's own SQL, replicated to the primary.
    wait_until("the device has the row", || {
        (count(&d, "SELECT count(*) FROM todos WHERE id = 1") == 1).then_some(())
    });
    d.execute("UPDATE todos SET title = 'Eins' WHERE id = 1", [])
        .unwrap();
    wait_until("the device's change invalidates the row", || {
        (!ann.is_cached(&key.key)).then_some(())
    });
    assert_eq!(
        ann.fetch(&key).unwrap().field("title"),
        Some(&Value::from("Eins"))
    );
}

#[test]
fn a_user_reaches_only_its_rows_and_writes_by_its_rules() {
    let s = setup();
    let (ann_d, ann) = user(&s, "ann");
    let (_bob_d, bob) = user(&s, "bob");
    // Search and count see only one's own rows and public ones.
    assert_eq!(ann.count("todos", vec![]).unwrap(), 3);
    assert_eq!(bob.count("todos", vec![]).unwrap(), 2);
    // A reference to another user's row (handed out to ann) does not open it to bob.
    let one = ann.get("todos", eq("title", "One")).unwrap();
    let err = bob.fetch(&obj(&one).key).unwrap_err();
    assert!(matches!(err, BrokerError::NotFound(_)), "{err:?}");
    let err = bob
        .update(
            &obj(&one).key,
            vec![("title".into(), "One".into(), "mine".into())],
        )
        .unwrap_err();
    assert!(matches!(err, BrokerError::NotFound(_)), "{err:?}");
    // Public rows are the backend's.
    let three = bob.get("todos", eq("title", "Three")).unwrap();
    let err = bob
        .update(
            &obj(&three).key,
            vec![("title".into(), "Three".into(), "x".into())],
        )
        .unwrap_err();
    assert!(matches!(err, BrokerError::Permission(_)), "{err:?}");
    assert!(matches!(
        bob.delete(&obj(&three).key),
        Err(BrokerError::Permission(_))
    ));
    let err = bob
        .create(
            "todos",
            vec![
                ("title".into(), "pub".into()),
                ("row_owner".into(), "*".into()),
            ],
        )
        .unwrap_err();
    assert!(matches!(err, BrokerError::Permission(_)), "{err:?}");
    // A new row is the device's user's, and replicates to that user's devices.
    let made = ann
        .create(
            "todos",
            vec![
                ("title".into(), "via broker".into()),
                ("list_id".into(), Value::Int(1)),
            ],
        )
        .unwrap();
    assert_eq!(obj(&made).field("row_owner"), Some(&Value::Int(10)));
    wait_until("the broker's write reaches ann's device", || {
        (count(
            &ann_d,
            "SELECT count(*) FROM todos WHERE title = 'via broker'",
        ) == 1)
            .then_some(())
    });
    assert_eq!(bob.count("todos", eq("title", "via broker")).unwrap(), 0);
    // Delete one's own row.
    ann.delete(&obj(&made).key).unwrap();
    assert_eq!(
        count(
            &s.p,
            "SELECT count(*) FROM todos WHERE title = 'via broker'"
        ),
        0
    );
    let err = ann.fetch(&obj(&made).key).unwrap_err();
    assert!(matches!(err, BrokerError::NotFound(_)), "{err:?}");
}

#[test]
fn foreign_keys_become_references_and_lists() {
    let s = setup();
    let (_d, ann) = user(&s, "ann");
    let one = ann.get("todos", eq("title", "One")).unwrap();
    let list_ref = obj(&one)
        .refs
        .iter()
        .find(|(n, _)| n == "list")
        .and_then(|(_, r)| r.clone())
        .expect("todos.list_id is a reference named list");
    let list = ann.fetch(&list_ref).unwrap();
    assert_eq!(list.field("name"), Some(&Value::from("ann's")));
    assert_eq!(list.backrefs, vec!["todos".to_string()]);
    let items = ann.backref(&list_ref, "todos").unwrap();
    assert_eq!(items.len(), 2);
}

#[test]
fn nested_writes_are_savepoints() {
    let s = setup();
    let primary = octodb_broker::Peer {
        node_id: 1,
        user_id: 0,
        public_key: String::new(),
        role: octodb::Role::Primary,
    };
    let outcome = s.tables.transaction(|t| {
        t.insert(
            &primary,
            "lists",
            vec![
                ("name".into(), "outer".into()),
                ("row_owner".into(), "*".into()),
            ],
        )?;
        let inner = t.transaction(|t| {
            t.insert(
                &primary,
                "lists",
                vec![
                    ("name".into(), "inner".into()),
                    ("row_owner".into(), "*".into()),
                ],
            )?;
            // Fails: the whole inner part goes, the outer stays.
            t.insert(
                &primary,
                "lists",
                vec![("id".into(), Value::Int(1)), ("name".into(), "dup".into())],
            )
        });
        assert!(inner.is_err());
        Ok(())
    });
    outcome.unwrap();
    assert_eq!(
        count(&s.p, "SELECT count(*) FROM lists WHERE name = 'outer'"),
        1
    );
    assert_eq!(
        count(
            &s.p,
            "SELECT count(*) FROM lists WHERE name IN ('inner', 'dup')"
        ),
        0
    );
}
