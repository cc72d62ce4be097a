//! Every MLS operation a Sotto client performs, over any provider.
//!
//! All conversations, one-to-one included, are MLS groups with the ratchet tree in the
//! Welcome and every handshake message encrypted (pure-ciphertext wire format), so the
//! delivery service sees only group id, epoch and content type. Functions return the RFC 9420
//! wire encoding of what must be sent.
//!
//! The sender's clock travels with everything: inside the encrypted envelope of application
//! messages, and as the authenticated data of commits (8 bytes, big-endian seconds), which
//! MLS signs but does not encrypt. So for commits the server reads the committer's clock:
//! it already knows which device committed and when it accepted the commit, so what it
//! learns is that device's clock error.

use crate::identity::DeviceKey;
use crate::{CoreError, Envelope, MlsOp, MlsProvider, mls_err};
use openmls::framing::errors::{MessageDecryptionError, SecretTreeError};
use openmls::prelude::*;
use sotto_proto::DeviceAddr;
use tls_codec::{Deserialize as _, Serialize as _};

/// How many past epochs' secrets a member keeps. The server accepts messages only in a group's
/// current epoch, so none are needed; zero keeps forward secrecy tight.
const MAX_PAST_EPOCHS: usize = 0;

/// A group member as the ratchet tree shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberDevice {
    /// Who.
    pub addr: DeviceAddr,
    /// Its MLS signature key.
    pub signature_key: Vec<u8>,
}

fn capabilities(suite: Ciphersuite) -> Capabilities {
    Capabilities::new(
        None,
        Some(&[suite]),
        // A last-resort KeyPackage must list this extension or openmls rejects it on receipt.
        Some(&[ExtensionType::LastResort]),
        None,
        Some(&[CredentialType::Basic]),
    )
}

fn join_config() -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .wire_format_policy(PURE_CIPHERTEXT_WIRE_FORMAT_POLICY)
        .use_ratchet_tree_extension(true)
        .max_past_epochs(MAX_PAST_EPOCHS)
        .build()
}

fn serialize(msg: &MlsMessageOut) -> Result<Vec<u8>, CoreError> {
    msg.tls_serialize_detached().map_err(mls_err(MlsOp::Encode))
}

/// Freshly generated KeyPackages, in wire encoding.
#[derive(Debug)]
pub struct NewKeyPackages {
    /// One-time KeyPackages.
    pub one_time: Vec<Vec<u8>>,
    /// A last-resort KeyPackage, if one was asked for.
    pub last_resort: Option<Vec<u8>>,
}

/// `count` one-time KeyPackages, plus a last-resort one if asked.
pub fn new_key_packages<P: MlsProvider>(
    provider: &P,
    device: &DeviceKey,
    suite: Ciphersuite,
    count: usize,
    last_resort: bool,
) -> Result<NewKeyPackages, CoreError> {
    let build = |last: bool| -> Result<Vec<u8>, CoreError> {
        let mut builder = KeyPackage::builder().leaf_node_capabilities(capabilities(suite));
        if last {
            builder = builder.mark_as_last_resort();
        }
        let bundle = builder
            .build(suite, provider, device, device.credential_with_key())
            .map_err(mls_err(MlsOp::NewKeyPackage))?;
        serialize(&MlsMessageOut::from(bundle.key_package().clone()))
    };
    let one_time = (0..count).map(|_| build(false)).collect::<Result<_, _>>()?;
    let last = if last_resort {
        Some(build(true)?)
    } else {
        None
    };
    Ok(NewKeyPackages {
        one_time,
        last_resort: last,
    })
}

/// Parses and verifies a claimed KeyPackage, and checks that it belongs to `expected` with
/// `signature_key` (from the owner's verified device list) on `suite`.
pub fn verify_key_package<P: MlsProvider>(
    provider: &P,
    bytes: &[u8],
    expected: &DeviceAddr,
    signature_key: &[u8],
    suite: Ciphersuite,
) -> Result<KeyPackage, CoreError> {
    let msg = MlsMessageIn::tls_deserialize_exact(bytes)
        .map_err(|_| CoreError::Malformed("KeyPackage encoding".into()))?;
    let MlsMessageBodyIn::KeyPackage(kp) = msg.extract() else {
        return Err(CoreError::Malformed("not a KeyPackage".into()));
    };
    let kp = kp
        .validate(provider.crypto(), ProtocolVersion::Mls10)
        .map_err(|e| CoreError::Security(format!("KeyPackage does not verify: {e}")))?;
    if kp.ciphersuite() != suite {
        return Err(CoreError::Security(
            "KeyPackage on another ciphersuite".into(),
        ));
    }
    let member = member_device(
        kp.leaf_node().credential(),
        kp.leaf_node().signature_key().as_slice(),
    )?;
    if &member.addr != expected || member.signature_key != signature_key {
        return Err(CoreError::Security(format!(
            "KeyPackage for {expected} does not match its device list"
        )));
    }
    Ok(kp)
}

fn member_device(credential: &Credential, signature_key: &[u8]) -> Result<MemberDevice, CoreError> {
    let basic = BasicCredential::try_from(credential.clone())
        .map_err(|_| CoreError::Malformed("credential type".into()))?;
    Ok(MemberDevice {
        addr: DeviceAddr::from_credential_identity(basic.identity())?,
        signature_key: signature_key.to_vec(),
    })
}

/// Creates a group with this device as its only member.
pub fn create<P: MlsProvider>(
    provider: &P,
    device: &DeviceKey,
    suite: Ciphersuite,
) -> Result<MlsGroup, CoreError> {
    let config = MlsGroupCreateConfig::builder()
        .ciphersuite(suite)
        .capabilities(capabilities(suite))
        .wire_format_policy(PURE_CIPHERTEXT_WIRE_FORMAT_POLICY)
        .use_ratchet_tree_extension(true)
        .max_past_epochs(MAX_PAST_EPOCHS)
        .build();
    MlsGroup::new(provider, device, &config, device.credential_with_key())
        .map_err(mls_err(MlsOp::CreateGroup))
}

/// Loads a group from storage.
pub fn load<P: MlsProvider>(provider: &P, group_id: &[u8]) -> Result<MlsGroup, CoreError> {
    MlsGroup::load(provider.storage(), &GroupId::from_slice(group_id))
        .map_err(mls_err(MlsOp::LoadGroup))?
        .ok_or_else(|| CoreError::State("no such group on this device".into()))
}

/// The members of a group, as the ratchet tree lists them.
pub fn members(group: &MlsGroup) -> Result<Vec<MemberDevice>, CoreError> {
    group
        .members()
        .map(|m| member_device(&m.credential, &m.signature_key))
        .collect()
}

/// A commit with its Welcome, in wire encoding. The commit is pending in the group until
/// [`merge_pending`] or [`discard_pending`].
#[derive(Debug)]
pub struct CommitOut {
    /// The commit.
    pub commit: Vec<u8>,
    /// The Welcome for added devices.
    pub welcome: Option<Vec<u8>>,
}

/// Stages a commit adding `key_packages` (each verified by [`verify_key_package`]), sent at
/// `sent_at` by this device's clock.
pub fn add<P: MlsProvider>(
    provider: &P,
    device: &DeviceKey,
    group: &mut MlsGroup,
    key_packages: &[KeyPackage],
    sent_at: u64,
) -> Result<CommitOut, CoreError> {
    group.set_aad(sent_at.to_be_bytes().to_vec());
    let (commit, welcome, _) = group
        .add_members(provider, device, key_packages)
        .map_err(mls_err(MlsOp::Add))?;
    Ok(CommitOut {
        commit: serialize(&commit)?,
        welcome: Some(serialize(&welcome)?),
    })
}

/// Stages a commit removing `devices` from the group, sent at `sent_at`.
pub fn remove<P: MlsProvider>(
    provider: &P,
    device: &DeviceKey,
    group: &mut MlsGroup,
    devices: &[DeviceAddr],
    sent_at: u64,
) -> Result<CommitOut, CoreError> {
    let mut leaves = Vec::new();
    for m in group.members() {
        if devices.contains(&member_device(&m.credential, &m.signature_key)?.addr) {
            leaves.push(m.index);
        }
    }
    if leaves.is_empty() {
        return Err(CoreError::State(
            "none of those devices is in the group".into(),
        ));
    }
    group.set_aad(sent_at.to_be_bytes().to_vec());
    let (commit, _, _) = group
        .remove_members(provider, device, &leaves)
        .map_err(mls_err(MlsOp::Remove))?;
    Ok(CommitOut {
        commit: serialize(&commit)?,
        welcome: None,
    })
}

/// Stages a commit that gives this device's leaf fresh keys (post-compromise healing), sent
/// at `sent_at`.
pub fn update<P: MlsProvider>(
    provider: &P,
    device: &DeviceKey,
    group: &mut MlsGroup,
    sent_at: u64,
) -> Result<CommitOut, CoreError> {
    group.set_aad(sent_at.to_be_bytes().to_vec());
    let bundle = group
        .self_update(provider, device, LeafNodeParameters::default())
        .map_err(mls_err(MlsOp::Update))?;
    Ok(CommitOut {
        commit: serialize(bundle.commit())?,
        welcome: None,
    })
}

/// Applies this device's pending commit after the server accepted it.
pub fn merge_pending<P: MlsProvider>(provider: &P, group: &mut MlsGroup) -> Result<(), CoreError> {
    group
        .merge_pending_commit(provider)
        .map_err(mls_err(MlsOp::MergeCommit))
}

/// Drops this device's pending commit after the server refused it.
pub fn discard_pending<P: MlsProvider>(
    provider: &P,
    group: &mut MlsGroup,
) -> Result<(), CoreError> {
    group
        .clear_pending_commit(provider.storage())
        .map_err(mls_err(MlsOp::DiscardCommit))
}

/// Encrypts `envelope` for the group.
pub fn encrypt<P: MlsProvider>(
    provider: &P,
    device: &DeviceKey,
    group: &mut MlsGroup,
    envelope: &Envelope,
) -> Result<Vec<u8>, CoreError> {
    let msg = group
        .create_message(provider, device, &envelope.encode())
        .map_err(mls_err(MlsOp::Encrypt))?;
    serialize(&msg)
}

/// Joins the group `group_id` from a Welcome.
pub fn join<P: MlsProvider>(
    provider: &P,
    welcome: &[u8],
    group_id: &[u8],
) -> Result<MlsGroup, CoreError> {
    let msg = MlsMessageIn::tls_deserialize_exact(welcome)
        .map_err(|_| CoreError::Malformed("Welcome encoding".into()))?;
    let MlsMessageBodyIn::Welcome(welcome) = msg.extract() else {
        return Err(CoreError::Malformed("not a Welcome".into()));
    };
    let staged = StagedWelcome::build_from_welcome(provider, &join_config(), welcome)
        .map_err(mls_err(MlsOp::Join))?
        // A device that was removed and is now added back replaces its old, inactive state.
        .replace_old_group()
        .build()
        .map_err(mls_err(MlsOp::Join))?;
    // The server files a Welcome under the group of the commit it came with; a Welcome into
    // another group would replace that group's state here (the caller only checked that
    // the group it was filed under is not an active conversation).
    if staged.group_context().group_id().as_slice() != group_id {
        return Err(CoreError::Security(
            "a Welcome into another group than the one it was sent to; refused".into(),
        ));
    }
    staged.into_group(provider).map_err(mls_err(MlsOp::Join))
}

/// A processed group message.
#[derive(Debug)]
pub enum Received {
    /// Decrypted content from a member.
    Content {
        /// The sending device, authenticated by MLS.
        sender: DeviceAddr,
        /// What it sent, and when by its clock.
        envelope: Envelope,
    },
    /// A commit, staged but not yet merged: check [`CommitSummary::proven_devices`] against
    /// the directory, then [`merge_staged`].
    Commit(StagedCommitIn),
}

/// A staged commit and what it changes.
#[derive(Debug)]
pub struct StagedCommitIn {
    staged: Box<StagedCommit>,
    /// What it changes.
    pub summary: CommitSummary,
}

/// The membership changes of a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitSummary {
    /// Who committed.
    pub committer: DeviceAddr,
    /// When, by the committer's clock; `None` if its commit did not say.
    pub sent_at: Option<u64>,
    /// Devices added, with the signature keys the group will trust.
    pub added: Vec<MemberDevice>,
    /// The committer's new leaf, if the commit carries an update path: its signature key
    /// must be proven like an added device's.
    pub updated: Option<MemberDevice>,
    /// Whether this device is removed.
    pub self_removed: bool,
}

/// Decrypts and verifies one group message.
pub fn process<P: MlsProvider>(
    provider: &P,
    group: &mut MlsGroup,
    bytes: &[u8],
) -> Result<Received, CoreError> {
    let msg = MlsMessageIn::tls_deserialize_exact(bytes)
        .map_err(|_| CoreError::Malformed("MLS message encoding".into()))?;
    let protocol = msg
        .try_into_protocol_message()
        .map_err(|_| CoreError::Malformed("not a group message".into()))?;
    let processed = group
        .process_message(provider, protocol)
        .map_err(|e| match e {
            // The key of this message was used and deleted: it came before.
            ProcessMessageError::ValidationError(ValidationError::UnableToDecrypt(
                MessageDecryptionError::SecretTreeError(SecretTreeError::SecretReuseError),
            )) => CoreError::Security(
                "this message came before (its key is used up): a replay, refused".into(),
            ),
            e => mls_err(MlsOp::Process)(e),
        })?;
    let is_member = matches!(processed.sender(), Sender::Member(_));
    let sender_cred = processed.credential().clone();
    let sender = member_device(&sender_cred, &[])?.addr;
    let sent_at = <[u8; 8]>::try_from(processed.aad())
        .ok()
        .map(u64::from_be_bytes);
    match processed.into_content() {
        ProcessedMessageContent::ApplicationMessage(app) => Ok(Received::Content {
            sender,
            envelope: Envelope::decode(&app.into_bytes())?,
        }),
        // Only a member commits: a joiner's own commit (an external join, which needs the
        // group's public state) would let whoever holds that state add itself.
        ProcessedMessageContent::StagedCommitMessage(_) if !is_member => Err(CoreError::Security(
            "a commit made by no member of the group (an external join) is refused".into(),
        )),
        ProcessedMessageContent::StagedCommitMessage(staged) => {
            let added = staged
                .add_proposals()
                .map(|p| {
                    let leaf = p.add_proposal().key_package().leaf_node();
                    member_device(leaf.credential(), leaf.signature_key().as_slice())
                })
                .collect::<Result<Vec<_>, _>>()?;
            let updated = staged
                .update_path_leaf_node()
                .map(|leaf| member_device(leaf.credential(), leaf.signature_key().as_slice()))
                .transpose()?;
            if updated.as_ref().is_some_and(|u| u.addr != sender) {
                return Err(CoreError::Security(
                    "a commit's update path names another device than its sender".into(),
                ));
            }
            let summary = CommitSummary {
                committer: sender,
                sent_at,
                added,
                updated,
                self_removed: staged.self_removed(),
            };
            Ok(Received::Commit(StagedCommitIn { staged, summary }))
        }
        ProcessedMessageContent::ProposalMessage(_)
        | ProcessedMessageContent::ExternalJoinProposalMessage(_) => Err(CoreError::State(
            "standalone proposals are not used by Sotto".into(),
        )),
        _ => Err(CoreError::State("unexpected message content".into())),
    }
}

impl CommitSummary {
    /// Every device whose signature key this commit introduces into the group: the added
    /// devices and the committer's updated leaf.
    pub fn proven_devices(&self) -> Vec<MemberDevice> {
        self.added.iter().chain(&self.updated).cloned().collect()
    }
}

/// Merges a staged commit received from another member.
pub fn merge_staged<P: MlsProvider>(
    provider: &P,
    group: &mut MlsGroup,
    staged: StagedCommitIn,
) -> Result<CommitSummary, CoreError> {
    group
        .merge_staged_commit(provider, *staged.staged)
        .map_err(mls_err(MlsOp::MergeReceived))?;
    Ok(staged.summary)
}
