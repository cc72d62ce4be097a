//! A real Sotto server on a loopback port with its own SQLite directory, and clients with
//! their own encrypted stores, for end-to-end tests.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use sotto_client::{Client, KdfParams};
use sotto_server::storage::sqlite::SqliteStorage;
use sotto_server::{AppState, Config};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct Server {
    pub url: String,
    pub addr: SocketAddr,
    pub data: PathBuf,
    suite: u16,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Server {
    pub async fn start(data: &Path, suite: u16) -> Server {
        Self::start_at(data, suite, "127.0.0.1:0".parse().unwrap()).await
    }

    async fn start_at(data: &Path, suite: u16, addr: SocketAddr) -> Server {
        let storage = SqliteStorage::open(data).unwrap();
        let state = AppState::new(
            Arc::new(storage),
            Config {
                ciphersuite: suite,
                ..Config::default()
            },
        );
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            sotto_server::serve(listener, state, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        Server {
            url: format!("http://{addr}"),
            addr,
            data: data.to_owned(),
            suite,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }

    /// Stops the server and starts a new one on the same address and data directory.
    pub async fn restart(&mut self) {
        self.stop().await;
        *self = Self::start_at(&self.data.clone(), self.suite, self.addr).await;
    }
}

pub async fn client(server: &Server, dir: &Path, name: &str) -> Client {
    Client::init(
        &dir.join(name),
        &server.url,
        name,
        "correct horse",
        KdfParams::INSECURE_TEST,
    )
    .await
    .unwrap()
}

pub fn reopen(dir: &Path, name: &str) -> Client {
    Client::open(&dir.join(name), "correct horse").unwrap()
}

/// Syncs and returns what a user would see, as "from: text" or "* event" lines, marking it
/// shown.
pub async fn recv(c: &Client) -> Vec<String> {
    let report = c.sync().await.unwrap();
    assert!(
        report.security_failures.is_empty(),
        "{:?}",
        report.security_failures
    );
    let batch = c.unshown().unwrap();
    c.mark_shown(&batch).unwrap();
    batch
        .iter()
        .map(|m| {
            if m.kind == "event" {
                format!("* {}", m.text)
            } else {
                format!("{}: {}", m.from, m.text)
            }
        })
        .collect()
}

pub fn lines(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}
