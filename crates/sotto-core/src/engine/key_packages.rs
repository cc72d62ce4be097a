//! This device's KeyPackages: made with their secrets in the store, and topped up on the
//! server whenever others have claimed most of them.

use super::Engine;
use crate::store::{ClientStore, StoreTx};
use crate::{ClientError, Transport, group};
use sotto_proto::api::UploadKeyPackagesRequest;

/// One-time KeyPackages uploaded at a time.
const KEY_PACKAGE_BATCH: usize = 50;
/// Below this many one-time KeyPackages on the server, the device uploads a batch.
const KEY_PACKAGE_LOW: u64 = 10;

impl<S: ClientStore, T: Transport> Engine<S, T> {
    /// Makes a batch of one-time KeyPackages (and a last-resort one if asked), keeping their
    /// secrets in the store.
    pub(super) fn new_key_packages(
        &self,
        tx: &impl StoreTx,
        last_resort: bool,
    ) -> Result<group::NewKeyPackages, ClientError> {
        Ok(group::new_key_packages(
            &tx.mls(),
            &self.device,
            self.suite,
            KEY_PACKAGE_BATCH,
            last_resort,
        )?)
    }

    /// Uploads a batch of KeyPackages when the server holds too few, as a sync does at its
    /// end: for a device that took a Welcome off its push socket (someone used one of its
    /// KeyPackages).
    pub async fn top_up(&self) -> Result<(), ClientError> {
        let token = self.token().await?;
        self.top_up_key_packages(&token).await
    }

    /// Uploads a batch of KeyPackages when the server holds fewer than the low mark (or no
    /// last-resort one): others may have claimed them while this device was away.
    pub(super) async fn top_up_key_packages(&self, token: &str) -> Result<(), ClientError> {
        let count = self.transport.key_package_count(token).await?;
        if count.count >= KEY_PACKAGE_LOW && count.last_resort {
            return Ok(());
        }
        let fresh = self.tx(|tx| self.new_key_packages(tx, !count.last_resort))?;
        self.transport
            .upload_key_packages(
                token,
                &UploadKeyPackagesRequest {
                    key_packages: fresh.one_time.into_iter().map(Into::into).collect(),
                    last_resort: fresh.last_resort.map(Into::into),
                },
            )
            .await?;
        Ok(())
    }
}
