//! Before the clock starts: accounts, signed-in devices, one-to-one MLS groups set up through
//! the server (a real commit adding the second member, with its Welcome), and every message
//! of the timed phase encrypted and serialized.

use openmls::prelude::{Ciphersuite, MlsGroup};
use openmls_libcrux_crypto::Provider;
use sotto_core::group;
use sotto_core::{Content, DeviceKey, Envelope, IdentityKey};
use sotto_proto::api::{
    ChallengeResponse, RegisterRequest, SendRequest, ServerConfig, TokenResponse, WelcomeOut,
};
use sotto_proto::{Bytes, GroupId, ServerId, Username};
use std::collections::HashMap;
use std::hash::{Hash as _, Hasher as _};

use crate::LoadArgs;

/// A device of the load, signed in.
pub struct Device {
    pub key: DeviceKey,
    pub token: String,
}

/// One message of the timed phase, ready to post.
pub struct Prepared {
    /// `/v1/groups/{group}/messages`, on the node's URL.
    pub path: String,
    /// The sending device.
    pub sender: usize,
    /// The receiving device.
    pub recipient: usize,
    /// The MLS message.
    pub mls: Vec<u8>,
    /// The JSON body.
    pub body: Vec<u8>,
}

/// Everything the timed phase needs.
pub struct World {
    /// The nodes' URLs. Device `d` holds its socket on node `d mod K`; a message goes through
    /// the node after its recipient's, so that with several nodes every message crosses
    /// from one node to another.
    pub urls: Vec<String>,
    pub devices: Vec<Device>,
    pub messages: Vec<Prepared>,
    /// Each message's index, by the hash of its MLS bytes: how a receiver knows which one
    /// it got.
    pub index: HashMap<u64, usize>,
    pub http: reqwest::Client,
}

/// The key a message is known by.
pub fn key(mls: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    mls.hash(&mut h);
    h.finish()
}

/// A member of a conversation, with its MLS state in memory.
pub struct Member {
    pub provider: Provider,
    pub group: MlsGroup,
}

/// Two devices, each with its spare KeyPackage, about to share a group.
pub struct Pair<'a> {
    pub a: &'a Device,
    pub spare_a: Spare,
    pub b: &'a Device,
    pub spare_b: Spare,
}

impl Pair<'_> {
    /// `a` makes a group and adds `b` with a real commit and Welcome, posted through the
    /// node at `url` with `roster` as the group's devices after it (the server cannot tell
    /// a roster from the MLS group's members). Returns the group's message path and both
    /// members.
    pub async fn make(
        self,
        http: &reqwest::Client,
        url: &str,
        suite: Ciphersuite,
        roster: Vec<sotto_proto::DeviceAddr>,
        client_id: String,
    ) -> Result<(String, Member, Member), String> {
        let Pair {
            a,
            spare_a: (pa, _),
            b,
            spare_b: (pb, kp_b),
        } = self;
        let kp = group::verify_key_package(
            &pa,
            kp_b.first().ok_or("a KeyPackage")?,
            b.key.addr(),
            &b.key.public(),
            suite,
        )
        .map_err(|e| e.to_string())?;
        let mut ga = group::create(&pa, &a.key, suite).map_err(|e| e.to_string())?;
        let out = group::add(&pa, &a.key, &mut ga, &[kp], 0).map_err(|e| e.to_string())?;
        group::merge_pending(&pa, &mut ga).map_err(|e| e.to_string())?;
        let welcome = out.welcome.ok_or("a Welcome")?;
        let gid = ga.group_id().as_slice().to_vec();
        let gb = group::join(&pb, &welcome, &gid).map_err(|e| e.to_string())?;
        let group_id = GroupId::from_bytes(&gid).map_err(|e| e.to_string())?;
        let path = format!("/v1/groups/{}/messages", hex(group_id.as_bytes()));
        // The group's first commit: nobody before it has to process it.
        let commit = SendRequest {
            client_id,
            message: Bytes(out.commit),
            recipients: Vec::new(),
            to_roster: false,
            roster: Some(roster),
            welcome: Some(WelcomeOut {
                message: Bytes(welcome),
                recipients: vec![b.key.addr().clone()],
            }),
        };
        let _: serde_json::Value =
            post(http, &format!("{url}{path}"), Some(&a.token), &commit).await?;
        let member = |provider, group| Member { provider, group };
        Ok((path, member(pa, ga), member(pb, gb)))
    }
}

async fn post<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    body: &impl serde::Serialize,
) -> Result<T, String> {
    let mut req = http.post(url).json(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.map_err(|e| e.to_string())?;
    let status = resp.status();
    if !status.is_success() {
        let text = resp.text().await.unwrap_or_default();
        return Err(format!("{url}: {status} {text}"));
    }
    resp.json().await.map_err(|e| e.to_string())
}

impl World {
    /// Registers and signs in `args.devices` devices, sets up their conversations through
    /// the first node and prepares `args.messages` messages; reports its progress through
    /// `say`.
    pub async fn build(
        urls: Vec<String>,
        args: &LoadArgs,
        say: &impl Fn(serde_json::Value),
    ) -> Result<World, String> {
        let url = urls.first().ok_or("no node")?.clone();
        let url = url.as_str();
        let http = client(args.concurrency)?;
        let (devices, providers, suite) = register(&http, url, args.devices, say).await?;

        // Conversations: device 2k adds device 2k+1, through the server.
        let mut pairs = Vec::with_capacity(args.devices / 2);
        let mut providers = providers.into_iter();
        for k in 0..args.devices / 2 {
            let (a, b) = (&devices[2 * k], &devices[2 * k + 1]);
            let spare_a = providers.next().ok_or("a provider")?;
            let spare_b = providers.next().ok_or("a provider")?;
            let roster = vec![a.key.addr().clone(), b.key.addr().clone()];
            let client_id = format!("{:032x}", u128::MAX - k as u128);
            let group = Pair {
                a,
                spare_a,
                b,
                spare_b,
            };
            pairs.push(group.make(&http, url, suite, roster, client_id).await?);
        }
        say(serde_json::json!({ "phase": "conversations", "conversations": pairs.len() }));

        // Message i goes one way or the other in conversation i mod (devices / 2).
        let text = "x".repeat(args.size);
        let mut messages = Vec::with_capacity(args.messages);
        let mut index = HashMap::with_capacity(args.messages);
        let mut mls_bytes = 0usize;
        for i in 0..args.messages {
            let k = i % pairs.len();
            let round = i / pairs.len();
            let backwards = round % 2 == 1;
            let (path, ma, mb) = pairs.get_mut(k).ok_or("a conversation")?;
            let (from, to, member) = if backwards {
                (2 * k + 1, 2 * k, mb)
            } else {
                (2 * k, 2 * k + 1, ma)
            };
            let envelope = Envelope {
                sent_at: 0,
                counter: Some(round as u64 + 1),
                log_root: Some(sotto_bench::VOUCHED_ROOT),
                content: Content::Text { body: text.clone() },
            };
            let mls = group::encrypt(
                &member.provider,
                &devices[from].key,
                &mut member.group,
                &envelope,
            )
            .map_err(|e| e.to_string())?;
            mls_bytes += mls.len();
            index.insert(key(&mls), i);
            let copy = mls.clone();
            // As a client names the one other device of a conversation.
            let send = SendRequest {
                client_id: format!("{i:032x}"),
                message: Bytes(mls),
                recipients: vec![devices[to].key.addr().clone()],
                to_roster: false,
                roster: None,
                welcome: None,
            };
            messages.push(Prepared {
                path: path.clone(),
                sender: from,
                recipient: to,
                mls: copy,
                body: serde_json::to_vec(&send).map_err(|e| e.to_string())?,
            });
        }
        say(serde_json::json!({
            "phase": "prepared",
            "messages": messages.len(),
            "mls_bytes_per_message": mls_bytes / messages.len().max(1),
        }));
        Ok(World {
            urls,
            devices,
            messages,
            index,
            http,
        })
    }
}

/// An HTTP client that never goes through a proxy the environment names: everything stays
/// on loopback.
pub fn client(concurrency: usize) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(concurrency.max(64))
        .build()
        .map_err(|e| e.to_string())
}

/// A device registered with a KeyPackage to spare: its MLS provider and one-time KeyPackages.
pub type Spare = (Provider, Vec<Vec<u8>>);

/// Registers and signs in `n` devices (`u000000`, `u000001`, …) on the node at `url`, each
/// with one one-time KeyPackage kept aside (not uploaded) for whoever adds it to a group;
/// returns them with the server's ciphersuite.
pub async fn register(
    http: &reqwest::Client,
    url: &str,
    n: usize,
    say: &impl Fn(serde_json::Value),
) -> Result<(Vec<Device>, Vec<Spare>, Ciphersuite), String> {
    let config: ServerConfig = http
        .get(format!("{url}/v1/config"))
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    let suite = sotto_core::suite::ciphersuite(config.ciphersuite).map_err(|e| e.to_string())?;
    let mut devices = Vec::with_capacity(n);
    let mut spares = Vec::with_capacity(n);
    for i in 0..n {
        let name = Username::parse(&format!("u{i:06}")).map_err(|e| e.to_string())?;
        let (identity, key, provider) = (
            IdentityKey::generate(),
            DeviceKey::generate(name),
            Provider::new().map_err(|e| e.to_string())?,
        );
        let kps =
            group::new_key_packages(&provider, &key, suite, 1, true).map_err(|e| e.to_string())?;
        let register = RegisterRequest {
            identity_key: Bytes(identity.public().to_vec()),
            device_list: identity.sign_device_list(&key.first_device_list("load", 1)),
            key_packages: Vec::new(),
            last_resort: Bytes(kps.last_resort.ok_or("a last-resort KeyPackage")?),
        };
        let _: serde_json::Value =
            post(http, &format!("{url}/v1/accounts"), None, &register).await?;
        let token = sign_in(http, url, &config.server_id, &key).await?;
        devices.push(Device { key, token });
        spares.push((provider, kps.one_time));
    }
    say(serde_json::json!({ "phase": "registered", "devices": devices.len() }));
    Ok((devices, spares, suite))
}

async fn sign_in(
    http: &reqwest::Client,
    url: &str,
    server: &ServerId,
    key: &DeviceKey,
) -> Result<String, String> {
    let challenge: ChallengeResponse = post(
        http,
        &format!("{url}/v1/auth/challenge"),
        None,
        &serde_json::json!({ "device": key.addr() }),
    )
    .await?;
    let answer = serde_json::json!({
        "device": key.addr(),
        "signature": Bytes(key.sign_challenge(server, challenge.challenge.as_slice())),
        "challenge": challenge.challenge,
    });
    let token: TokenResponse = post(http, &format!("{url}/v1/auth/token"), None, &answer).await?;
    Ok(token.token)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
