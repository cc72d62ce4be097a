//! The `sotto` binary as users and scripts run it: a real server process (killed with
//! SIGKILL mid-conversation), real clients, the JSON output and the exit-code contract.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use serde_json::Value;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const SOTTO: &str = env!("CARGO_BIN_EXE_sotto");

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

struct ServerProcess {
    child: Child,
    addr: SocketAddr,
    data: PathBuf,
}

impl ServerProcess {
    fn start(data: &Path, addr: SocketAddr) -> ServerProcess {
        let child = Command::new(SOTTO)
            .args(["server", "--listen", &addr.to_string(), "--data"])
            .arg(data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Wait until it accepts connections (bounded; not a timing assertion).
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        ServerProcess {
            child,
            addr,
            data: data.to_owned(),
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// SIGKILL: no graceful shutdown, no flush.
    fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    fn restart(&mut self) {
        *self = ServerProcess::start(&self.data.clone(), self.addr);
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sotto(home: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(SOTTO);
    c.arg("--home")
        .arg(home)
        .args(args)
        .env("SOTTO_PASSCODE", "correct horse")
        .env("SOTTO_INSECURE_TEST_KDF", "1")
        .stdin(Stdio::null());
    c
}

fn run(home: &Path, args: &[&str]) -> Output {
    sotto(home, args).output().unwrap()
}

fn ok(home: &Path, args: &[&str]) -> String {
    let out = run(home, args);
    assert!(
        out.status.success(),
        "sotto {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn json_lines(s: &str) -> Vec<Value> {
    s.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Creates the accounts alice and bob; returns their homes.
fn alice_and_bob(server: &ServerProcess, dir: &Path) -> (PathBuf, PathBuf) {
    let homes = (dir.join("alice"), dir.join("bob"));
    for (home, name) in [(&homes.0, "alice"), (&homes.1, "bob")] {
        ok(home, &["init", "--server", &server.url(), "--user", name]);
    }
    homes
}

#[test]
fn messages_survive_a_killed_server_and_show_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(&dir.path().join("server"), free_addr());
    let (alice, bob) = alice_and_bob(&server, dir.path());

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
            "kind",
            "text",
        ] {
            assert!(!m[field].is_null(), "{field} missing in {m}");
        }
        assert_eq!(m["from"], "alice");
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

#[test]
fn recv_with_timeout_wakes_on_push() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("server"), free_addr());
    let (alice, bob) = alice_and_bob(&server, dir.path());
    // Bob waits (up to a generous bound) for the first message; the WebSocket push wakes him.
    let waiting = sotto(&bob, &["recv", "--json", "--timeout", "120"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    ok(&alice, &["send", "bob", "are you there?"]);
    let out = waiting.wait_with_output().unwrap();
    assert!(out.status.success());
    let got = json_lines(&String::from_utf8(out.stdout).unwrap());
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["text"], "are you there?");
}

#[test]
fn waiting_recv_rides_out_a_server_crash() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(&dir.path().join("server"), free_addr());
    let (alice, bob) = alice_and_bob(&server, dir.path());
    // Bob starts waiting while the server is down (killed), and keeps waiting through it.
    server.kill9();
    let waiting = sotto(&bob, &["recv", "--json", "--timeout", "120"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Give bob's first attempt time to meet the dead server (this only sets the scene; no
    // outcome depends on how long it takes).
    std::thread::sleep(Duration::from_millis(500));
    server.restart();
    ok(&alice, &["send", "bob", "after the crash"]);
    let out = waiting.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = json_lines(&String::from_utf8(out.stdout).unwrap());
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["text"], "after the crash");
}

#[test]
fn exit_codes_follow_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("server"), free_addr());
    let alice = dir.path().join("alice");
    ok(
        &alice,
        &["init", "--server", &server.url(), "--user", "alice"],
    );
    let code = |out: Output| out.status.code().unwrap();

    // 1: usage or user error.
    assert_eq!(code(run(&alice, &["frobnicate"])), 1);
    assert_eq!(code(run(&alice, &["send", "nobody", "hi"])), 1);
    assert_eq!(code(run(&alice, &["send", "--group", "nope", "hi"])), 1);
    let other = dir.path().join("other");
    assert_eq!(
        code(run(
            &other,
            &["init", "--server", &server.url(), "--user", "Bad Name"]
        )),
        1
    );
    assert_eq!(
        code(run(
            &other,
            &["init", "--server", &server.url(), "--user", "alice"]
        )),
        1
    );
    assert_eq!(code(run(&alice, &["server", "--listen", "0.0.0.0:0"])), 1);
    assert_eq!(
        code(run(&alice, &["server", "--database", "postgres://x"])),
        1
    );
    // 2: server unreachable.
    let closed = format!("http://{}", free_addr());
    assert_eq!(
        code(run(
            &other,
            &["init", "--server", &closed, "--user", "carol"]
        )),
        2
    );
    // 4: locked or wrong passcode; no account at all.
    let wrong = sotto(&alice, &["whoami"])
        .env("SOTTO_PASSCODE", "wrong")
        .output()
        .unwrap();
    assert_eq!(code(wrong), 4);
    assert_eq!(code(run(&dir.path().join("nobody-here"), &["whoami"])), 4);
    // 0, and the failed attempts above left no half-made account behind.
    assert_eq!(code(run(&alice, &["whoami"])), 0);
    assert!(!other.join("keyfile.json").exists());
}
