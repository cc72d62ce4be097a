//! A real Sotto server on a loopback port with its own SQLite directory, and clients with
//! their own encrypted stores, for end-to-end tests.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use sotto_client::{Client, InitOptions, KdfParams, MessageKind};
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
    config: Config,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Server {
    pub async fn start(data: &Path, suite: u16) -> Server {
        Self::start_with(
            data,
            Config {
                ciphersuite: suite,
                ..Config::default()
            },
        )
        .await
    }

    /// A server with explicit settings (limits raised or lowered for one test).
    pub async fn start_with(data: &Path, config: Config) -> Server {
        Self::start_at(data, config, "127.0.0.1:0".parse().unwrap()).await
    }

    async fn start_at(data: &Path, config: Config, addr: SocketAddr) -> Server {
        let storage = SqliteStorage::open(data).unwrap();
        let state = AppState::new(Arc::new(storage), config.clone())
            .await
            .unwrap();
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
            config,
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
        *self = Self::start_at(&self.data.clone(), self.config.clone(), self.addr).await;
    }
}

pub async fn client(server: &Server, dir: &Path, name: &str) -> Client {
    client_via(&server.url, dir, name).await
}

pub fn reopen(dir: &Path, name: &str) -> Client {
    Client::open(&dir.join(name), "correct horse").unwrap()
}

/// Syncs and returns what a user would see, as "from: text", "* event" or "SECURITY: reason"
/// lines, marking it shown.
pub async fn recv(c: &Client) -> Vec<String> {
    c.sync().await.unwrap();
    shown(c)
}

/// What a user would see without syncing first, marking it shown.
pub fn shown(c: &Client) -> Vec<String> {
    let batch = c.unshown().unwrap();
    c.mark_shown(&batch).unwrap();
    batch
        .iter()
        .map(|m| match m.kind {
            MessageKind::Text => format!("{}: {}", m.from.as_deref().unwrap(), m.text),
            MessageKind::Security => format!("SECURITY: {}", m.text),
            _ => format!("* {}", m.text),
        })
        .collect()
}

pub fn lines(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// A TCP proxy on loopback in front of a server that can cut the network under a client: a
/// connection that carries a request containing the marker is closed without forwarding it,
/// as a dropped connection would be.
pub struct CutProxy {
    pub url: String,
    marker: Arc<std::sync::Mutex<Option<Vec<u8>>>>,
    task: JoinHandle<()>,
}

impl CutProxy {
    pub async fn start(server: &Server) -> CutProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let marker: Arc<std::sync::Mutex<Option<Vec<u8>>>> = Arc::default();
        let target = server.addr;
        let cut = marker.clone();
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                tokio::spawn(forward(inbound, target, cut.clone()));
            }
        });
        CutProxy { url, marker, task }
    }

    /// From now on, drop every connection that sends `marker` (e.g. `POST /v1/groups/`);
    /// `None` lets everything through again.
    pub fn cut(&self, marker: Option<&str>) {
        *self.marker.lock().unwrap() = marker.map(|m| m.as_bytes().to_vec());
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(
    inbound: tokio::net::TcpStream,
    target: SocketAddr,
    marker: Arc<std::sync::Mutex<Option<Vec<u8>>>>,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let Ok(outbound) = tokio::net::TcpStream::connect(target).await else {
        return;
    };
    let (mut from_client, mut to_client) = inbound.into_split();
    let (mut from_server, mut to_server) = outbound.into_split();
    let up = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from_client.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let cut = marker
                .lock()
                .unwrap()
                .as_ref()
                .is_some_and(|m| buf[..n].windows(m.len()).any(|w| w == m.as_slice()));
            if cut || to_server.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    let down = tokio::io::copy(&mut from_server, &mut to_client);
    // Whichever side ends first ends the connection; dropping both halves closes it.
    tokio::select! {
        () = up => {}
        _ = down => {}
    }
}

/// A client of `name` that reaches the server at `url` (a proxy, say).
pub async fn client_via(url: &str, dir: &Path, name: &str) -> Client {
    Client::init(
        &dir.join(name),
        url,
        name,
        "correct horse",
        InitOptions::new(KdfParams::INSECURE_TEST),
    )
    .await
    .unwrap()
}
