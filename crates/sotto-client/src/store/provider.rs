//! openmls's view of the store: its state in the same SQLCipher connection (and so the same
//! transactions) as everything else, encoded as JSON.

use openmls_libcrux_crypto::CryptoProvider;
use openmls_sqlite_storage::{Codec, SqliteStorageProvider};
use openmls_traits::OpenMlsProvider;
use rusqlite::Connection;

/// JSON codec for openmls state in SQLite.
#[derive(Default)]
pub struct JsonCodec;

impl Codec for JsonCodec {
    type Error = serde_json::Error;

    fn to_vec<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, Self::Error> {
        serde_json::to_vec(value)
    }

    fn from_slice<T: serde::de::DeserializeOwned>(slice: &[u8]) -> Result<T, Self::Error> {
        serde_json::from_slice(slice)
    }
}

/// The openmls provider of a device: libcrux crypto over the encrypted store.
pub struct StoreProvider<'a> {
    crypto: &'a CryptoProvider,
    storage: SqliteStorageProvider<JsonCodec, &'a Connection>,
}

impl<'a> StoreProvider<'a> {
    /// A provider over `conn`.
    pub fn new(crypto: &'a CryptoProvider, conn: &'a Connection) -> Self {
        StoreProvider {
            crypto,
            storage: SqliteStorageProvider::new(conn),
        }
    }
}

impl<'a> OpenMlsProvider for StoreProvider<'a> {
    type CryptoProvider = CryptoProvider;
    type RandProvider = CryptoProvider;
    type StorageProvider = SqliteStorageProvider<JsonCodec, &'a Connection>;

    fn storage(&self) -> &Self::StorageProvider {
        &self.storage
    }

    fn crypto(&self) -> &Self::CryptoProvider {
        self.crypto
    }

    fn rand(&self) -> &Self::RandProvider {
        self.crypto
    }
}
