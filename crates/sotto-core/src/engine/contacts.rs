//! What `sotto verify` shows and changes: a contact's safety number, whether the user
//! confirmed it, where the key-transparency log stood when the contact's keys were checked,
//! and accepting a contact's new identity key.

use super::Engine;
use super::directory::OnNewKey;
use crate::store::{ClientStore, StoreTx};
use crate::{ClientError, Transport, safety};
use sotto_proto::Username;

/// A contact as `sotto verify` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactStatus {
    /// The contact.
    pub user: Username,
    /// 60 digits over both identity keys ([`safety::safety_number`]).
    pub safety_number: String,
    /// Whether the user confirmed this safety number.
    pub verified: bool,
    /// The key-transparency epoch at which the contact's devices were just checked.
    pub log_epoch: u64,
}

impl<S: ClientStore, T: Transport> Engine<S, T> {
    /// Checks `user`'s identity key and devices now (signatures, the key-transparency log,
    /// the pinned key) and returns their safety number. A key other than the one pinned is a
    /// security failure, as everywhere.
    pub async fn contact_status(&self, user: &Username) -> Result<ContactStatus, ClientError> {
        let checked = self.checked(user, OnNewKey::Refuse).await;
        Ok(self.recorded(checked)?.0)
    }

    /// Pins `user`'s current identity key in place of the one pinned before, once its
    /// devices pass every check; the contact is then not verified.
    pub async fn accept_identity(&self, user: &Username) -> Result<ContactStatus, ClientError> {
        let checked = self.checked(user, OnNewKey::Accept).await;
        Ok(self.recorded(checked)?.0)
    }

    /// Marks `user` verified if `typed` is their safety number. A different number is a
    /// security failure (someone may stand between the two of them), reported but not kept
    /// as a security event: it is what the user typed.
    pub async fn confirm_contact(
        &self,
        user: &Username,
        typed: &str,
    ) -> Result<ContactStatus, ClientError> {
        let digits = typed.chars().filter(|c| !c.is_whitespace()).count();
        if digits != 60
            || !typed
                .chars()
                .all(|c| c.is_ascii_digit() || c.is_whitespace())
        {
            return Err(ClientError::Usage(
                "a safety number is 60 digits (spaces between them are fine)".into(),
            ));
        }
        let checked = self.checked(user, OnNewKey::Refuse).await;
        let (mut status, key) = self.recorded(checked)?;
        if !safety::matches(&status.safety_number, typed) {
            return Err(ClientError::Security(format!(
                "the safety number you gave is not the one this device computes for {user}; \
                 do not mark them verified: someone may stand between you"
            )));
        }
        if !self.tx(|tx| Ok(tx.mark_verified(user, &key)?))? {
            return Err(ClientError::Security(format!(
                "the identity key of {user} changed while it was being checked"
            )));
        }
        status.verified = true;
        Ok(status)
    }

    async fn checked(
        &self,
        user: &Username,
        on_new_key: OnNewKey,
    ) -> Result<(ContactStatus, [u8; 32]), ClientError> {
        if *user == self.me().user {
            return Err(ClientError::Usage(
                "that is your own account: compare safety numbers with someone else".into(),
            ));
        }
        let (_, key) = self.fetch_checked(user, on_new_key).await?;
        let contact = self.store.read(|tx| tx.contact(user))?;
        let verified = contact.is_some_and(|c| c.verified && c.identity_key == key);
        let safety_number =
            safety::safety_number((&self.me().user, &self.identity.public()), (user, &key));
        let status = ContactStatus {
            user: user.clone(),
            safety_number,
            verified,
            log_epoch: self.log_head()?.unwrap_or(0),
        };
        Ok((status, key))
    }
}
