//! `sotto server --database`: server processes on PostgreSQL (the database of
//! `SOTTO_TEST_POSTGRES`, in a schema of their own), killed with SIGKILL mid-conversation:
//! one server restarted, and two nodes behind a balancer, one of them killed. Without the
//! variable the tests say they were skipped.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

mod common;

use common::ServerProcess;

const POSTGRES_URL: &str = "SOTTO_TEST_POSTGRES";

/// A schema of its own in the test database, dropped at the end.
struct Schema {
    url: String,
    name: String,
}

impl Schema {
    fn create(url: &str) -> Schema {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let name = format!("sotto_cli_test_{}_{nanos}", std::process::id());
        Self::execute(url, &format!("CREATE SCHEMA {name}")).unwrap();
        Schema {
            url: url.to_owned(),
            name,
        }
    }

    fn execute(url: &str, sql: &str) -> Result<(), tokio_postgres::Error> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
            tokio::spawn(connection);
            client.batch_execute(sql).await
        })
    }

    /// The database URL with this schema first in the search path.
    fn url(&self) -> String {
        let joint = if self.url.contains('?') { '&' } else { '?' };
        format!("{}{joint}options=-csearch_path%3D{}", self.url, self.name)
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        // Not a panic while a failed test unwinds: that would abort the test binary.
        if let Err(e) = Self::execute(&self.url, &format!("DROP SCHEMA {} CASCADE", self.name)) {
            eprintln!("dropping the test schema {} failed: {e}", self.name);
        }
    }
}

#[test]
fn on_postgres_messages_survive_a_killed_server_and_show_once() {
    let Ok(url) = std::env::var(POSTGRES_URL) else {
        eprintln!("skipped: set {POSTGRES_URL} to a PostgreSQL URL to run this against it");
        return;
    };
    let schema = Schema::create(&url);
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start_on(
        vec!["--database".into(), schema.url().into()],
        "127.0.0.1:0",
    );
    common::messages_survive_a_killed_server_and_show_once(&mut server, dir.path());
}

/// A loopback TCP relay standing in for a load balancer: it forwards each new connection to
/// the node it currently points at.
struct Balancer {
    addr: std::net::SocketAddr,
    target: std::sync::Arc<std::sync::Mutex<std::net::SocketAddr>>,
}

impl Balancer {
    fn to(target: std::net::SocketAddr) -> Balancer {
        use std::net::{TcpListener, TcpStream};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let target = std::sync::Arc::new(std::sync::Mutex::new(target));
        let current = target.clone();
        std::thread::spawn(move || {
            for inbound in listener.incoming() {
                let Ok(inbound) = inbound else { continue };
                let to = *current.lock().unwrap();
                // A node that is down: the client sees its connection closed.
                let Ok(outbound) = TcpStream::connect(to) else {
                    continue;
                };
                for (mut from, mut into) in [
                    (inbound.try_clone().unwrap(), outbound.try_clone().unwrap()),
                    (outbound, inbound),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut into);
                        let _ = into.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Balancer { addr, target }
    }

    fn point_at(&self, node: std::net::SocketAddr) {
        *self.target.lock().unwrap() = node;
    }
}

#[test]
fn a_killed_node_loses_no_accepted_message_and_its_clients_carry_on_through_another() {
    let Ok(url) = std::env::var(POSTGRES_URL) else {
        eprintln!("skipped: set {POSTGRES_URL} to a PostgreSQL URL to run this against it");
        return;
    };
    let schema = Schema::create(&url);
    let storage = || vec!["--database".into(), schema.url().into()];
    let mut a = ServerProcess::start_on(storage(), "127.0.0.1:0");
    let b = ServerProcess::start_on(storage(), "127.0.0.1:0");
    let balancer = Balancer::to(a.addr);
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = (dir.path().join("alice"), dir.path().join("bob"));
    let server = format!("http://{}", balancer.addr);
    for (home, name) in [(&alice, "alice"), (&bob, "bob")] {
        common::ok(home, &["init", "--server", &server, "--user", name]);
    }

    // Alice sends twelve messages, one after another, in step with the test: node A is
    // killed after the fourth, and the balancer turns to node B after the sixth.
    let texts: Vec<String> = (1..=12).map(|i| format!("message {i}")).collect();
    let (reached, at) = std::sync::mpsc::channel::<usize>();
    let (go_on, resume) = std::sync::mpsc::channel::<()>();
    let sender = {
        let (alice, texts) = (alice.clone(), texts.clone());
        std::thread::spawn(move || {
            let mut codes = Vec::new();
            for (i, text) in texts.iter().enumerate() {
                if i == 4 || i == 6 {
                    reached.send(i).unwrap();
                    resume.recv().unwrap();
                }
                codes.push(common::run(&alice, &["send", "bob", text]).status.code());
            }
            codes
        })
    };
    assert_eq!(at.recv(), Ok(4));
    a.kill9();
    go_on.send(()).unwrap();
    assert_eq!(at.recv(), Ok(6));
    balancer.point_at(b.addr);
    go_on.send(()).unwrap();
    let codes = sender.join().unwrap();
    let ok = Some(0);
    let unreachable = Some(2);
    assert_eq!(
        codes,
        [
            ok,
            ok,
            ok,
            ok,
            unreachable,
            unreachable,
            ok,
            ok,
            ok,
            ok,
            ok,
            ok
        ],
        "the two sends that met the dead node found the server unreachable; the rest succeeded"
    );
    // Alice's next sync sends what her outbox kept, through node B.
    common::ok(&alice, &["recv"]);

    let got = common::json_lines(&common::ok(&bob, &["recv", "--json"]));
    let shown: Vec<&str> = got.iter().map(|m| m["text"].as_str().unwrap()).collect();
    // Every send that succeeded, in order; a failed one only if its request had left
    // (kept in the outbox and sent again); none twice.
    let accepted: Vec<&str> = texts
        .iter()
        .zip(&codes)
        .filter(|(_, code)| **code == Some(0))
        .map(|(t, _)| t.as_str())
        .collect();
    let shown_accepted: Vec<&str> = shown
        .iter()
        .copied()
        .filter(|t| accepted.contains(t))
        .collect();
    assert_eq!(shown_accepted, accepted, "{codes:?}");
    let mut once = shown.clone();
    once.sort_unstable();
    once.dedup();
    assert_eq!(once.len(), shown.len(), "shown twice: {shown:?}");
    assert!(shown.iter().all(|t| texts.iter().any(|s| s == t)));
    assert_eq!(common::ok(&bob, &["recv", "--json"]), "", "and never again");
}
