//! What the CLI's test binaries share: the `sotto` binary run as users run it, and a real
//! server process.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]
#![allow(dead_code, reason = "each test binary uses a different subset")]

use serde_json::Value;
use std::ffi::OsString;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const SOTTO: &str = env!("CARGO_BIN_EXE_sotto");

/// A bound on waits that only a broken program reaches; never a measurement.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// The lines a child writes to one of its streams, read on a thread as they come.
pub struct Lines {
    rx: mpsc::Receiver<String>,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Lines {
    pub fn of(stream: impl std::io::Read + Send + 'static) -> Lines {
        let (tx, rx) = mpsc::channel();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let all = seen.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                all.lock().unwrap().push(line.clone());
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines { rx, seen }
    }

    /// Waits for the first line containing `needle`, and returns it.
    pub fn wait_for(&self, needle: &str) -> String {
        loop {
            match self.rx.recv_timeout(PATIENCE) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(e) => panic!("no line containing {needle:?} ({e}); saw {:?}", self.all()),
            }
        }
    }

    /// Every line so far.
    pub fn all(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

pub struct ServerProcess {
    child: Child,
    pub addr: SocketAddr,
    /// The storage arguments it was started with: `--data DIR` or `--database URL`.
    storage: Vec<OsString>,
    pub log: Lines,
}

impl ServerProcess {
    /// Starts `sotto server` on its embedded storage in `data`, on a port the system picks.
    pub fn start(data: &Path) -> ServerProcess {
        Self::start_on(vec!["--data".into(), data.into()], "127.0.0.1:0")
    }

    /// Starts `sotto server` with `storage` arguments on `listen`, and reads the port from its
    /// `listening on` line.
    pub fn start_on(storage: Vec<OsString>, listen: &str) -> ServerProcess {
        let mut child = Command::new(SOTTO)
            .args(["server", "--listen", listen])
            .args(&storage)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Lines::of(child.stderr.take().unwrap());
        let line = log.wait_for("sotto server listening on http://");
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap()
            .parse()
            .unwrap();
        ServerProcess {
            child,
            addr,
            storage,
            log,
        }
    }

    /// The embedded storage's database file.
    pub fn sqlite_file(&self) -> PathBuf {
        let data = self.storage.iter().skip_while(|a| *a != "--data").nth(1);
        Path::new(data.expect("a server on its embedded storage")).join("sotto.db")
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// SIGKILL: no graceful shutdown, no flush.
    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Starts it again on the same address: clients know the server by its URL.
    pub fn restart(&mut self) {
        *self = ServerProcess::start_on(self.storage.clone(), &self.addr.to_string());
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn sotto(home: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(SOTTO);
    c.arg("--home")
        .arg(home)
        .args(args)
        .env("SOTTO_PASSCODE", "correct horse")
        .env("SOTTO_INSECURE_TEST_KDF", "1")
        .stdin(Stdio::null());
    c
}

pub fn run(home: &Path, args: &[&str]) -> Output {
    sotto(home, args).output().unwrap()
}

pub fn ok(home: &Path, args: &[&str]) -> String {
    let out = run(home, args);
    assert!(
        out.status.success(),
        "sotto {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn json_lines(s: &str) -> Vec<Value> {
    s.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Creates the accounts alice and bob; returns their homes.
pub fn alice_and_bob(server: &ServerProcess, dir: &Path) -> (PathBuf, PathBuf) {
    let homes = (dir.join("alice"), dir.join("bob"));
    for (home, name) in [(&homes.0, "alice"), (&homes.1, "bob")] {
        ok(home, &["init", "--server", &server.url(), "--user", name]);
    }
    homes
}

/// Alice sends bob three messages, the server is killed with SIGKILL and started again,
/// alice makes a group with bob and writes to it: bob receives all five, in order, once.
pub fn messages_survive_a_killed_server_and_show_once(server: &mut ServerProcess, dir: &Path) {
    let (alice, bob) = alice_and_bob(server, dir);

    for i in 1..=3 {
        ok(&alice, &["send", "bob", &format!("message {i}")]);
    }
    server.kill9();
    server.restart();
    ok(&alice, &["group", "create", "crew", "--members", "bob"]);
    ok(&alice, &["send", "--group", "crew", "hello crew"]);

    let got = json_lines(&ok(&bob, &["recv", "--json"]));
    let texts: Vec<&str> = got.iter().map(|m| m["text"].as_str().unwrap()).collect();
    assert_eq!(
        texts,
        [
            "message 1",
            "message 2",
            "message 3",
            "alice added you",
            "hello crew"
        ]
    );
    for m in &got {
        for field in [
            "id",
            "conversation",
            "from",
            "device",
            "sent_at",
            "received_at",
            "kind",
            "text",
        ] {
            assert!(!m[field].is_null(), "{field} missing in {m}");
        }
        assert_eq!(m["from"], "alice");
        assert_eq!(m["sender_verified"], true);
    }
    assert!(got[0].get("group").is_none(), "a 1:1 message has no group");
    assert_eq!(got[0]["kind"], "text");
    assert_eq!(got[3]["kind"], "event");
    assert_eq!(got[4]["group"], "crew");
    // Shown once: a second recv prints nothing.
    assert_eq!(ok(&bob, &["recv", "--json"]), "");

    let members = ok(&bob, &["group", "members", "crew"]);
    assert_eq!(
        members
            .lines()
            .map(|l| l.split('\t').next().unwrap())
            .collect::<Vec<_>>(),
        ["alice", "bob"]
    );
    let who: Value = serde_json::from_str(&ok(&bob, &["whoami", "--json"])).unwrap();
    assert_eq!(who["user"], "bob");
    assert_eq!(who["ciphersuite"], 0x004D);
}
