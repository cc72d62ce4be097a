//! A new device joining an existing account (`devices link`): it makes its keys and
//! KeyPackages, leaves an offer at a rendezvous on the server, shows the code that names
//! the offer, and waits for a device of the account to approve it. The answer it opens
//! holds the account's identity key and device list; it is trusted only once the device list
//! it brings (which names this device) verifies under that key and is the one the
//! key-transparency log holds for the account asked for.

use super::{Engine, NewAccount};
use crate::identity::{DeviceKey, IdentityKey};
use crate::link::{self, LinkKeys};
use crate::store::{ClientStore, Setting, StoreTx, Unshown};
use crate::{ClientError, Clock, Transport, group};
use sotto_proto::ErrorCode;
use sotto_proto::api::ServerConfig;
use sotto_proto::device_list::parse_verifying_key;
use sotto_proto::link::{
    CreateLinkRequest, LINK_VERSION, LinkAnswer, LinkCode, LinkId, LinkOffer, PickupRequest,
    SECRET_LEN,
};
use std::sync::Arc;
use zeroize::Zeroizing;

/// One-time KeyPackages an offer carries: the approver adds the device to a conversation
/// with each, then uses the last-resort one; the server gets the rest.
const OFFER_KEY_PACKAGES: usize = 100;

/// A device waiting to be approved.
pub struct PendingLink<S, T> {
    store: S,
    transport: T,
    clock: Arc<dyn Clock>,
    config: ServerConfig,
    device: DeviceKey,
    keys: LinkKeys,
    /// The offer's own bytes.
    offer: Vec<u8>,
    code: LinkCode,
    /// What picks the answer up.
    pickup: Zeroizing<Vec<u8>>,
    expires_at: u64,
    settings: Vec<(Setting, Vec<u8>)>,
}

impl<S, T> std::fmt::Debug for PendingLink<S, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PendingLink({}, {})", self.device.addr(), self.code.id)
    }
}

/// What a finished link brought.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Linked {
    /// Contacts received.
    pub contacts: usize,
    /// History entries received.
    pub history: usize,
    /// Old entries the approver left out (the archive's size limit).
    pub left_out: u64,
}

impl<S: ClientStore, T: Transport> PendingLink<S, T> {
    /// Makes this device's keys and KeyPackages in `store` (empty), and leaves its offer to
    /// join `account.user` on the server whose settings are `config`.
    pub async fn start(
        store: S,
        transport: T,
        clock: Arc<dyn Clock>,
        account: NewAccount<'_>,
        config: &ServerConfig,
    ) -> Result<Self, ClientError> {
        super::check_server(config)?;
        let suite = crate::suite::ciphersuite(config.ciphersuite)?;
        let device = DeviceKey::generate(account.user.clone());
        let keys = LinkKeys::generate()?;
        let made = store.transaction(|tx| {
            Ok::<_, ClientError>(group::new_key_packages(
                &tx.mls(),
                &device,
                suite,
                OFFER_KEY_PACKAGES,
                true,
            )?)
        })?;
        let last_resort = made
            .last_resort
            .ok_or_else(|| ClientError::Internal("no last-resort KeyPackage made".into()))?;
        let offer = LinkOffer {
            version: LINK_VERSION,
            user: account.user.clone(),
            device: device.entry(account.device_name, clock.now()),
            ciphersuite: config.ciphersuite,
            hpke_key: keys.public().to_vec().into(),
            key_packages: made.one_time.into_iter().map(Into::into).collect(),
            last_resort: last_resort.into(),
        };
        let secret: [u8; SECRET_LEN] = rand::random();
        let made = transport
            .create_link(&CreateLinkRequest {
                offer: offer.envelope(&secret).into(),
            })
            .await
            .map_err(|e| match e.code() {
                Some(ErrorCode::UnknownUser) => {
                    ClientError::Usage(format!("no such user: {}", account.user))
                }
                _ => e,
            })?;
        let id = LinkId::parse(&made.id)
            .map_err(|_| ClientError::Internal("the server made a malformed link id".into()))?;
        let offer = offer.encode();
        // Whatever the server says, the code works for at most this long.
        let expires_at = made
            .expires_at
            .min(clock.now().saturating_add(sotto_proto::link::LINK_TTL));
        Ok(PendingLink {
            store,
            transport,
            clock,
            config: config.clone(),
            device,
            keys,
            offer,
            code: LinkCode { id, secret },
            pickup: Zeroizing::new(made.secret.into_vec()),
            expires_at,
            settings: account
                .settings
                .iter()
                .map(|(k, v)| (*k, v.to_vec()))
                .collect(),
        })
    }

    /// The code to type or scan on a device of the account.
    pub fn code(&self) -> LinkCode {
        self.code
    }

    /// When the code stops working, seconds since the Unix epoch.
    pub fn expires_at(&self) -> u64 {
        self.expires_at
    }

    /// Asks the server once whether the device was approved.
    pub async fn poll(&self) -> Result<Option<LinkAnswer>, ClientError> {
        let resp = self
            .transport
            .pickup(
                &self.code.id,
                &PickupRequest {
                    secret: self.pickup.to_vec().into(),
                },
            )
            .await?;
        Ok(resp.answer)
    }

    /// Opens the approver's answer, checks it, and becomes the account's device: keys,
    /// contacts and history go into the store in one transaction, once the account's device
    /// list (naming this device) verifies and is the one the log holds.
    pub async fn finish(self, answer: LinkAnswer) -> Result<(Engine<S, T>, Linked), ClientError> {
        let secrets = link::open(&self.code, &self.offer, &self.keys, &answer)?;
        let identity = IdentityKey::from_secret(secrets.identity_secret.as_slice())?;
        let user = self.device.addr().user.clone();
        let key = parse_verifying_key(&identity.public()).map_err(|e| {
            ClientError::Security(format!("the identity key received is not valid: {e}"))
        })?;
        let list = secrets.device_list.clone().verify(&key).map_err(|e| {
            ClientError::Security(format!(
                "the device list received does not verify with the identity key received: {e}"
            ))
        })?;
        let listed = list
            .list()
            .device(self.device.addr().device)
            .is_some_and(|d| d.signature_key.as_slice() == self.device.public());
        if list.list().user != user || !listed {
            return Err(ClientError::Security(format!(
                "the device list received is not {user}'s with this device in it"
            )));
        }
        let archive = match &secrets.archive {
            Some(key) => Some(link::decrypt_archive(answer.archive.as_slice(), key)?),
            None => None,
        };
        let left_out = secrets.archive.as_ref().map_or(0, |a| a.left_out);
        let PendingLink {
            store,
            transport,
            clock,
            config,
            device,
            settings,
            code,
            pickup,
            ..
        } = self;
        let list_json = serde_json::to_vec(&secrets.device_list)
            .map_err(|e| ClientError::Internal(e.to_string()))?;
        // The log is the one the account's devices know, not one the server made up for
        // this device: its key, and no epoch older than the approver saw.
        if secrets.kt_vrf_key.as_slice() != config.kt_vrf_key.as_slice() {
            return Err(ClientError::Security(
                "the server's key-transparency key is not the one your other devices pinned".into(),
            ));
        }
        super::witnesses::check_checkpoint_key(
            &config.kt_checkpoint_key,
            config.kt_vrf_key.as_slice(),
        )?;
        if let Some(key) = &secrets.kt_checkpoint_key
            && *key != config.kt_checkpoint_key
        {
            return Err(ClientError::Security(
                "the server's key-transparency checkpoint key is not the one your other devices \
                 pinned"
                    .into(),
            ));
        }
        // What lookups need, before the check that needs them; the rest once it passed.
        store.transaction(|tx| {
            tx.set_setting(Setting::KtVrfKey, secrets.kt_vrf_key.as_slice())?;
            tx.set_setting(
                Setting::KtCheckpointKey,
                config.kt_checkpoint_key.as_bytes(),
            )?;
            if let Some(witnesses) = &secrets.kt_witnesses {
                tx.set_setting(Setting::KtWitnesses, witnesses.as_slice())?;
            }
            if let Some(head) = &secrets.kt_head {
                tx.set_setting(Setting::KtHead, head.as_slice())?;
            }
            Ok::<_, ClientError>(())
        })?;
        let engine = Engine::assemble(
            (store, transport, clock),
            device,
            identity,
            Some(config.server_id.clone()),
            config.ciphersuite,
        )?;
        // The identity key is trusted only as the key of the list the log holds for `user`:
        // a server cannot hand this device an account of its own making.
        engine.check_in_log(&user, &secrets.device_list).await?;
        let mut linked = Linked {
            contacts: secrets.contacts.len(),
            history: 0,
            left_out,
        };
        let e = &engine;
        let settings: Vec<(Setting, &[u8])> =
            settings.iter().map(|(k, v)| (*k, v.as_slice())).collect();
        engine.tx(|tx| {
            e.write_account(tx, &settings, &list_json)?;
            let at = e.now();
            for c in &secrets.contacts {
                if c.user == user {
                    continue;
                }
                tx.pin_identity(&c.user, c.identity_key.as_slice(), at)?;
                if c.verified {
                    tx.mark_verified(&c.user, c.identity_key.as_slice())?;
                }
            }
            if let Some(archive) = archive {
                for c in archive.conversations {
                    tx.upsert_conversation(&c.record())?;
                }
                for entry in archive.entries {
                    if let Some(record) = entry.record() {
                        tx.add_history(&record)?;
                        linked.history += 1;
                    }
                }
                // History, not news: `recv` shows what arrives from now on.
                if let Some(last) = tx.unshown(Unshown::All)?.last() {
                    tx.mark_shown(last.position)?;
                }
            }
            Ok(())
        })?;
        // The server may forget the answer now; if this fails, it does when the code expires.
        let done = PickupRequest {
            secret: pickup.to_vec().into(),
        };
        let _ = engine.transport.link_done(&code.id, &done).await;
        Ok((engine, linked))
    }
}
