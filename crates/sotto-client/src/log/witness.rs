//! `sotto witness`: a process anyone can run beside a server. It keeps its own signing key
//! and the last epoch and root it cosigned; at each round it reads the log's newest epoch,
//! verifies akd's append-only proof for every epoch since (refusing a log that went back,
//! forked, or rewrote its tree), and only then cosigns each of them (C2SP cosignature/v1)
//! and hands the cosignatures to the server, which serves them with every proof. While the
//! log stands still it cosigns the newest epoch again, so that clients can tell a current
//! root from one the log moved past.

use super::{fetch_epoch, signed_root, verify_step, write_file};
use crate::ClientError;
use crate::transport::Api;
use ed25519_dalek::{Signer as _, SigningKey};
use serde::{Deserialize, Serialize};
use sotto_core::Transport as _;
use sotto_proto::ErrorCode;
use sotto_proto::checkpoint::{
    WitnessKey, checkpoint_body, cosignature_line, cosigned_message, origin_of, witness_vkey,
};
use sotto_proto::kt::{CosignRequest, EpochResponse};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

const KEY_FILE: &str = "witness.key";
const STATE_FILE: &str = "witness.json";

/// The witness's key as kept in its directory.
#[derive(Serialize, Deserialize)]
struct KeyFile {
    name: String,
    secret: String,
}

/// What the witness last cosigned, and of which log.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    server: String,
    /// The log's checkpoint key, pinned at the first round.
    log_key: String,
    epoch: u64,
    root: String,
    /// When it last cosigned `epoch` (seconds since the Unix epoch).
    cosigned_at: u64,
}

/// A witness of one server's log.
pub struct Witness {
    api: Api,
    dir: PathBuf,
    key: SigningKey,
    public: WitnessKey,
    state: Option<State>,
}

/// What a round did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Round {
    /// The epochs it cosigned (the newest again, if it only refreshed its cosignature).
    pub cosigned: Vec<u64>,
    /// The newest epoch, as verified.
    pub epoch: u64,
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Witness {
    /// The witness kept in `dir` (its key made now, named `name`, if it has none), watching
    /// the server at `server`.
    pub fn open(
        dir: &Path,
        server: &str,
        name: Option<&str>,
        insecure_http: bool,
    ) -> Result<Self, ClientError> {
        let api = Api::new(server, insecure_http)?;
        crate::store::create_private_dir(dir)?;
        let key_path = dir.join(KEY_FILE);
        let state_path = dir.join(STATE_FILE);
        let damaged = || ClientError::Store(format!("{}: damaged", key_path.display()));
        let (key, key_name) = if key_path.exists() {
            let text = Zeroizing::new(
                std::fs::read_to_string(&key_path)
                    .map_err(|e| ClientError::Store(format!("{}: {e}", key_path.display())))?,
            );
            let file: KeyFile = serde_json::from_str(&text).map_err(|_| damaged())?;
            let hex_secret = Zeroizing::new(file.secret);
            let secret = Zeroizing::new(hex::decode(&*hex_secret).map_err(|_| damaged())?);
            let secret: &[u8; 32] = secret.as_slice().try_into().map_err(|_| damaged())?;
            if name.is_some_and(|n| n != file.name) {
                return Err(ClientError::Usage(format!(
                    "the witness in {} is named {}; --name cannot rename it",
                    dir.display(),
                    file.name
                )));
            }
            (SigningKey::from_bytes(secret), file.name)
        } else if state_path.exists() {
            // A witness that lost its key is not a new witness: its state names what it
            // cosigned with the old one.
            return Err(ClientError::Store(format!(
                "{} is missing, but {} holds what this witness cosigned; restore the key, or \
                 start a new witness in another --data",
                key_path.display(),
                state_path.display()
            )));
        } else {
            if let Some(n) = name
                && !sotto_proto::checkpoint::is_key_name(n)
            {
                return Err(ClientError::Usage(format!(
                    "--name {n:?}: a witness name has no spaces or '+'"
                )));
            }
            let key = SigningKey::generate(&mut rand::rngs::OsRng);
            let name = match name {
                Some(n) => n.to_owned(),
                None => format!(
                    "sotto-witness/{}",
                    hex::encode(&key.verifying_key().as_bytes()[..4])
                ),
            };
            let file = KeyFile {
                name: name.clone(),
                secret: hex::encode(key.as_bytes()),
            };
            let text = Zeroizing::new(
                serde_json::to_vec(&file).map_err(|e| ClientError::Internal(e.to_string()))?,
            );
            drop(Zeroizing::new(file.secret));
            write_file(&key_path, &text)?;
            (key, name)
        };
        let public = WitnessKey::parse(&witness_vkey(&key_name, &key.verifying_key()))
            .map_err(|e| ClientError::Usage(format!("--name {key_name}: {e}")))?;
        let state: Option<State> =
            if state_path.exists() {
                let text = std::fs::read(&state_path)
                    .map_err(|e| ClientError::Store(format!("{}: {e}", state_path.display())))?;
                Some(serde_json::from_slice(&text).map_err(|_| {
                    ClientError::Store(format!("{}: damaged", state_path.display()))
                })?)
            } else {
                None
            };
        if let Some(s) = &state
            && s.server != api.base()
        {
            return Err(ClientError::Usage(format!(
                "the witness in {} watches {}; use another --data for {}",
                dir.display(),
                s.server,
                api.base()
            )));
        }
        Ok(Witness {
            api,
            dir: dir.to_owned(),
            key,
            public,
            state,
        })
    }

    /// Its verifier key, which the server (`sotto server --witness`) and clients
    /// (`sotto init --witness`) are configured with.
    pub fn vkey(&self) -> String {
        self.public.vkey()
    }

    /// The last epoch it cosigned, if any.
    pub fn epoch(&self) -> Option<u64> {
        self.state.as_ref().map(|s| s.epoch)
    }

    /// One round: verifies every epoch from the last it cosigned to the newest and cosigns
    /// each; cosigns the newest again if it last did more than `refresh` seconds ago. With
    /// `wait`, the server may hold the request a few seconds for a newer epoch. `progress` is
    /// told of each epoch cosigned, with the newest.
    pub async fn round(
        &mut self,
        wait: bool,
        refresh: u64,
        progress: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<Round, ClientError> {
        let Some(mut state) = self.state.clone() else {
            return self.first_round().await;
        };
        let newest = self.api.kt_checkpoint(wait.then_some(state.epoch)).await?;
        let root = signed_root(&state.log_key, &newest)?;
        let mut cosigned = Vec::new();
        if newest.epoch < state.epoch {
            return Err(ClientError::Security(format!(
                "the server's newest epoch {} is older than epoch {}, which this witness \
                 cosigned: the log went back; nothing cosigned",
                newest.epoch, state.epoch
            )));
        }
        if newest.epoch == state.epoch {
            if hex::encode(root) != state.root {
                return Err(ClientError::Security(format!(
                    "the server shows another root for epoch {}, which this witness cosigned: \
                     the log forked; nothing cosigned",
                    state.epoch
                )));
            }
            if now().saturating_sub(state.cosigned_at) >= refresh {
                self.cosign(&mut state, newest.epoch, &root).await?;
                cosigned.push(newest.epoch);
            }
            return Ok(Round {
                cosigned,
                epoch: newest.epoch,
            });
        }
        let mut previous = decode_root(&state.root)?;
        for epoch in state.epoch.saturating_add(1)..=newest.epoch {
            let found = fetch_epoch(&self.api, epoch).await?;
            previous = verify_step(&state.log_key, &previous, &found).await?;
            self.cosign(&mut state, epoch, &previous).await?;
            cosigned.push(epoch);
            progress(epoch, newest.epoch);
        }
        Ok(Round {
            cosigned,
            epoch: newest.epoch,
        })
    }

    /// The first round: pins the log's checkpoint key and trusts its newest epoch as the
    /// start of the chain it will verify from then on.
    async fn first_round(&mut self) -> Result<Round, ClientError> {
        let log_key = self.api.config().await?.kt_checkpoint_key;
        let newest: EpochResponse = self.api.kt_checkpoint(None).await?;
        let root = signed_root(&log_key, &newest)?;
        let mut state = State {
            server: self.api.base().to_owned(),
            log_key,
            epoch: newest.epoch,
            root: hex::encode(root),
            cosigned_at: 0,
        };
        self.cosign(&mut state, newest.epoch, &root).await?;
        Ok(Round {
            cosigned: vec![newest.epoch],
            epoch: newest.epoch,
        })
    }

    /// Cosigns `root` at `epoch`, hands the cosignature to the server, and only then keeps
    /// `epoch` as the last cosigned.
    async fn cosign(
        &mut self,
        state: &mut State,
        epoch: u64,
        root: &[u8; 32],
    ) -> Result<(), ClientError> {
        let body = checkpoint_body(origin_of(&state.log_key), epoch, root)
            .map_err(|e| ClientError::Security(format!("the log's checkpoint key: {e}")))?;
        let time = now();
        let signature = self.key.sign(&cosigned_message(time, &body)).to_bytes();
        let line = cosignature_line(&self.public, time, &signature);
        self.api
            .kt_cosign(&CosignRequest {
                epoch,
                cosignature: line,
            })
            .await
            .map_err(|e| match e {
                ClientError::Refused(body) if body.code == ErrorCode::InvalidField => {
                    ClientError::Usage(format!(
                        "the server refused this witness's cosignature ({}); it keeps only those \
                         of the witnesses it is configured with: `sotto server --witness {}`",
                        body.message,
                        self.public.vkey()
                    ))
                }
                other => other,
            })?;
        state.epoch = epoch;
        state.root = hex::encode(root);
        state.cosigned_at = time;
        let text = serde_json::to_vec(&state).map_err(|e| ClientError::Internal(e.to_string()))?;
        write_file(&self.dir.join(STATE_FILE), &text)?;
        self.state = Some(state.clone());
        Ok(())
    }
}

fn decode_root(hex_root: &str) -> Result<[u8; 32], ClientError> {
    hex::decode(hex_root)
        .ok()
        .and_then(|r| r.try_into().ok())
        .ok_or_else(|| ClientError::Store("the witness's state is damaged".into()))
}
