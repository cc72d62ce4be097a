//! The engine's [`Transport`] over HTTP: the `/v1` API. Every call maps transport failures to
//! [`ClientError::Unreachable`] and error bodies to [`ClientError::Refused`].

use crate::ClientError;
use async_trait::async_trait;
use reqwest::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sotto_core::Transport;
use sotto_proto::api::{
    AckRequest, ChallengeRequest, ChallengeResponse, ClaimRequest, ClaimResponse, DevicesResponse,
    KeyPackageCount, QueueResponse, RegisterRequest, RegisterResponse, SendRequest, SendResponse,
    ServerConfig, TokenRequest, TokenResponse, UploadKeyPackagesRequest, UserResponse,
};
use sotto_proto::device_list::DeviceListUpdate;
use sotto_proto::kt::{CosignRequest, EpochResponse, LookupResponse};
use sotto_proto::link::{
    CreateLinkRequest, CreateLinkResponse, LinkAnswer, LinkId, LinkOfferResponse, PickupRequest,
    PickupResponse,
};
use sotto_proto::{ErrorBody, ErrorCode, GroupId, Username};
use std::time::Duration;

/// Whether a request may be sent a second time after a transport failure.
#[derive(Debug, Clone, Copy)]
enum Repeat {
    /// Repeating changes nothing: reads, and writes the server deduplicates (a send carries
    /// an idempotency key; a second claim costs at most one KeyPackage).
    Safe,
    /// A repeat could do harm or mislead: registering twice would report the name as taken
    /// although the first attempt created it.
    Never,
}

/// A connection to one Sotto server.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Api({})", self.base)
    }
}

/// Checks that the server at `base` may be spoken to: `https://` anywhere, plain `http://`
/// only to a loopback address (or `localhost`) unless `insecure_http` allows it everywhere.
/// Returns whether the connection is plain HTTP.
pub fn check_server_url(base: &str, insecure_http: bool) -> Result<bool, ClientError> {
    let url = reqwest::Url::parse(base)
        .map_err(|e| ClientError::Usage(format!("invalid server URL {base:?}: {e}")))?;
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    };
    match url.scheme() {
        "https" => Ok(false),
        "http" if loopback || insecure_http => Ok(true),
        "http" => Err(ClientError::Usage(format!(
            "refusing plain http:// to {}: everything, sign-in included, would cross the \
             network without TLS. Use https://, or, on a test network only, \
             `sotto init --insecure-http`",
            url.host_str().unwrap_or("that host")
        ))),
        other => Err(ClientError::Usage(format!(
            "server URL must start with https:// (or http:// for loopback), not {other}://"
        ))),
    }
}

impl Api {
    /// A client for the server at `base`, under the rules of `check_server_url`.
    pub fn new(base: &str, insecure_http: bool) -> Result<Self, ClientError> {
        let plain = check_server_url(base, insecure_http)?;
        let base = base.trim_end_matches('/').to_owned();
        // No redirects: the API never sends one, and following one could take a request (and
        // its bearer token) to another host, or from https:// to plain http://.
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::none());
        if plain {
            // A proxy from the environment would carry plain HTTP off the machine.
            builder = builder.no_proxy();
        }
        let http = builder
            .build()
            .map_err(|e| ClientError::Unreachable(format!("cannot make an HTTP client: {e}")))?;
        Ok(Api { http, base })
    }

    /// The server's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The WebSocket URL of the push channel.
    pub fn ws_url(&self) -> String {
        let rest = self
            .base
            .strip_prefix("https://")
            .map(|r| format!("wss://{r}"))
            .or_else(|| {
                self.base
                    .strip_prefix("http://")
                    .map(|r| format!("ws://{r}"))
            })
            .unwrap_or_default();
        format!("{rest}/v1/ws")
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&B>,
        repeat: Repeat,
    ) -> Result<Option<T>, ClientError> {
        let send = || {
            let mut req = self
                .http
                .request(method.clone(), format!("{}{path}", self.base));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            req.send()
        };
        // A pooled connection may have died with a server restart: a request that is safe to
        // repeat gets a second try.
        let resp = match (send().await, repeat) {
            (Err(_), Repeat::Safe) => send().await,
            (first, _) => first,
        }
        .map_err(|e| ClientError::Unreachable(format!("server unreachable: {}: {e}", self.base)))?;
        let status = resp.status();
        if status.is_success() {
            if status == reqwest::StatusCode::NO_CONTENT {
                return Ok(None);
            }
            return resp.json::<T>().await.map(Some).map_err(|e| {
                ClientError::Unreachable(format!("server unreachable: bad response: {e}"))
            });
        }
        let body = resp.json::<ErrorBody>().await.unwrap_or(ErrorBody {
            code: ErrorCode::Internal,
            message: format!("HTTP {status}"),
            epoch: None,
        });
        Err(ClientError::Refused(body))
    }

    async fn json<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&B>,
        repeat: Repeat,
    ) -> Result<T, ClientError> {
        self.call(method, path, token, body, repeat)
            .await?
            .ok_or_else(|| ClientError::Unreachable("server unreachable: empty response".into()))
    }

    /// `GET /v1/kt/checkpoint`: the log's newest epoch; with `after`, the server may wait a
    /// few seconds for one newer than that.
    pub async fn kt_checkpoint(&self, after: Option<u64>) -> Result<EpochResponse, ClientError> {
        let query = after.map_or_else(String::new, |a| format!("?after={a}"));
        self.json::<(), _>(
            Method::GET,
            &format!("/v1/kt/checkpoint{query}"),
            None,
            None,
            Repeat::Safe,
        )
        .await
    }

    /// `POST /v1/kt/cosignatures`.
    pub async fn kt_cosign(&self, req: &CosignRequest) -> Result<(), ClientError> {
        self.call::<_, ()>(
            Method::POST,
            "/v1/kt/cosignatures",
            None,
            Some(req),
            Repeat::Safe,
        )
        .await
        .map(|_| ())
    }
}

#[async_trait]
impl Transport for Api {
    /// `GET /v1/kt/epochs/{epoch}`.
    async fn kt_epoch(&self, epoch: u64, proof: bool) -> Result<EpochResponse, ClientError> {
        self.json::<(), _>(
            Method::GET,
            &format!("/v1/kt/epochs/{epoch}?proof={proof}"),
            None,
            None,
            Repeat::Safe,
        )
        .await
    }

    /// `GET /v1/devices`.
    async fn devices_seen(&self, token: &str) -> Result<DevicesResponse, ClientError> {
        self.json::<(), _>(Method::GET, "/v1/devices", Some(token), None, Repeat::Safe)
            .await
    }

    /// `POST /v1/devices`. Never repeated: a repeat of an update the server took is refused
    /// as stale, and the device then learns the list from the server.
    async fn update_device_list(
        &self,
        token: &str,
        req: &DeviceListUpdate,
    ) -> Result<(), ClientError> {
        self.call::<_, ()>(
            Method::POST,
            "/v1/devices",
            Some(token),
            Some(req),
            Repeat::Never,
        )
        .await
        .map(drop)
    }

    /// `POST /v1/links`.
    async fn create_link(
        &self,
        req: &CreateLinkRequest,
    ) -> Result<CreateLinkResponse, ClientError> {
        self.json(Method::POST, "/v1/links", None, Some(req), Repeat::Safe)
            .await
    }

    /// `GET /v1/links/{id}`.
    async fn link_offer(&self, token: &str, id: &LinkId) -> Result<LinkOfferResponse, ClientError> {
        self.json::<(), _>(
            Method::GET,
            &format!("/v1/links/{id}"),
            Some(token),
            None,
            Repeat::Safe,
        )
        .await
    }

    /// `PUT /v1/links/{id}`.
    async fn answer_link(
        &self,
        token: &str,
        id: &LinkId,
        answer: &LinkAnswer,
    ) -> Result<(), ClientError> {
        self.call::<_, ()>(
            Method::PUT,
            &format!("/v1/links/{id}"),
            Some(token),
            Some(answer),
            Repeat::Never,
        )
        .await
        .map(drop)
    }

    /// `POST /v1/links/{id}/pickup`.
    async fn pickup(
        &self,
        id: &LinkId,
        req: &PickupRequest,
    ) -> Result<PickupResponse, ClientError> {
        self.json(
            Method::POST,
            &format!("/v1/links/{id}/pickup"),
            None,
            Some(req),
            Repeat::Safe,
        )
        .await
    }

    /// `POST /v1/links/{id}/done`.
    async fn link_done(&self, id: &LinkId, req: &PickupRequest) -> Result<(), ClientError> {
        self.call::<_, ()>(
            Method::POST,
            &format!("/v1/links/{id}/done"),
            None,
            Some(req),
            Repeat::Safe,
        )
        .await
        .map(drop)
    }

    /// `GET /v1/config`.
    async fn config(&self) -> Result<ServerConfig, ClientError> {
        self.json::<(), _>(Method::GET, "/v1/config", None, None, Repeat::Safe)
            .await
    }

    /// `POST /v1/accounts`.
    async fn register(&self, req: &RegisterRequest) -> Result<RegisterResponse, ClientError> {
        self.json(Method::POST, "/v1/accounts", None, Some(req), Repeat::Never)
            .await
    }

    /// `POST /v1/auth/challenge`.
    async fn challenge(&self, req: &ChallengeRequest) -> Result<ChallengeResponse, ClientError> {
        self.json(
            Method::POST,
            "/v1/auth/challenge",
            None,
            Some(req),
            Repeat::Safe,
        )
        .await
    }

    /// `POST /v1/auth/token`.
    async fn token(&self, req: &TokenRequest) -> Result<TokenResponse, ClientError> {
        self.json(
            Method::POST,
            "/v1/auth/token",
            None,
            Some(req),
            Repeat::Never,
        )
        .await
    }

    /// `GET /v1/users/{user}`.
    async fn user(&self, token: &str, user: &Username) -> Result<UserResponse, ClientError> {
        self.json::<(), _>(
            Method::GET,
            &format!("/v1/users/{user}"),
            Some(token),
            None,
            Repeat::Safe,
        )
        .await
    }

    /// `GET /v1/kt/users/{user}`.
    async fn kt_lookup(
        &self,
        token: &str,
        user: &Username,
        after: Option<u64>,
        cosigned: usize,
    ) -> Result<LookupResponse, ClientError> {
        let mut query: Vec<String> = Vec::new();
        if let Some(a) = after {
            query.push(format!("after={a}"));
        }
        if cosigned > 0 {
            query.push(format!("cosigned={cosigned}"));
        }
        let query = if query.is_empty() {
            String::new()
        } else {
            format!("?{}", query.join("&"))
        };
        self.json::<(), _>(
            Method::GET,
            &format!("/v1/kt/users/{user}{query}"),
            Some(token),
            None,
            Repeat::Safe,
        )
        .await
    }

    /// `POST /v1/keypackages`.
    async fn upload_key_packages(
        &self,
        token: &str,
        req: &UploadKeyPackagesRequest,
    ) -> Result<KeyPackageCount, ClientError> {
        self.json(
            Method::POST,
            "/v1/keypackages",
            Some(token),
            Some(req),
            Repeat::Safe,
        )
        .await
    }

    /// `GET /v1/keypackages/count`.
    async fn key_package_count(&self, token: &str) -> Result<KeyPackageCount, ClientError> {
        self.json::<(), _>(
            Method::GET,
            "/v1/keypackages/count",
            Some(token),
            None,
            Repeat::Safe,
        )
        .await
    }

    /// `POST /v1/keypackages/claim`.
    async fn claim(&self, token: &str, user: &Username) -> Result<ClaimResponse, ClientError> {
        let req = ClaimRequest { user: user.clone() };
        self.json(
            Method::POST,
            "/v1/keypackages/claim",
            Some(token),
            Some(&req),
            Repeat::Safe,
        )
        .await
    }

    /// `POST /v1/groups/{group}/messages`.
    async fn send(
        &self,
        token: &str,
        group: &GroupId,
        req: &SendRequest,
    ) -> Result<SendResponse, ClientError> {
        self.json(
            Method::POST,
            &format!("/v1/groups/{group}/messages"),
            Some(token),
            Some(req),
            Repeat::Safe,
        )
        .await
    }

    /// `GET /v1/queue`.
    async fn queue(&self, token: &str, limit: u32) -> Result<QueueResponse, ClientError> {
        self.json::<(), _>(
            Method::GET,
            &format!("/v1/queue?limit={limit}"),
            Some(token),
            None,
            Repeat::Safe,
        )
        .await
    }

    /// `POST /v1/queue/ack`.
    async fn ack(&self, token: &str, ids: Vec<u64>) -> Result<(), ClientError> {
        self.call::<_, serde_json::Value>(
            Method::POST,
            "/v1/queue/ack",
            Some(token),
            Some(&AckRequest { ids }),
            Repeat::Safe,
        )
        .await
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::{Api, check_server_url};
    use crate::ClientError;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[tokio::test]
    async fn redirects_are_not_followed() {
        // A server on loopback that redirects to a plain-HTTP address elsewhere (another
        // loopback address here, standing for a remote host).
        let elsewhere = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
        let target = elsewhere.local_addr().unwrap();
        let redirector = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", redirector.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = redirector.accept().await {
                let mut request = [0u8; 2048];
                let _ = tcp.read(&mut request).await;
                let answer = format!(
                    "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://{target}/v1/config\r\n\
                     Content-Length: 0\r\n\r\n"
                );
                let _ = tcp.write_all(answer.as_bytes()).await;
            }
        });
        let err = sotto_core::Transport::config(&Api::new(&url, false).unwrap())
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::Refused(_)), "{err:?}");
        // Had the client followed, its connection would be waiting to be accepted by now.
        let followed = tokio::time::timeout(std::time::Duration::ZERO, elsewhere.accept()).await;
        assert!(followed.is_err(), "the redirect was followed");
    }

    #[test]
    fn plain_http_is_refused_unless_to_loopback_or_explicitly_allowed() {
        for ok in [
            "http://127.0.0.1:8787",
            "http://127.0.0.2:8787/",
            "http://[::1]:8787",
            "http://localhost:8787",
            "https://chat.example.org",
            "https://10.1.2.3",
        ] {
            assert!(check_server_url(ok, false).is_ok(), "{ok}");
        }
        for refused in [
            "http://10.1.2.3:8787",
            "http://chat.example.org",
            "http://127.0.0.1.nip.io",
            "http://[::ffff:10.0.0.1]",
            "ftp://127.0.0.1",
            "127.0.0.1:8787",
        ] {
            assert!(check_server_url(refused, false).is_err(), "{refused}");
        }
        assert!(check_server_url("http://10.1.2.3:8787", true).is_ok());
        assert!(check_server_url("ftp://127.0.0.1", true).is_err());
    }
}
