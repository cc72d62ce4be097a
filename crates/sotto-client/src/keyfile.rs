//! The data key of the local store, wrapped under Argon2id(passcode) with XChaCha20-Poly1305.
//!
//! The wrapped key lives in `keyfile.json`; the store itself is encrypted with the data key,
//! so changing the passcode rewrites one small file. Software cannot stop an attacker who
//! copies these files from guessing offline: the Argon2id cost is what protects the passcode.

use crate::ClientError;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sotto_proto::Bytes;
use std::path::Path;
use zeroize::Zeroizing;

const KEYFILE_VERSION: u32 = 1;
const AAD: &[u8] = b"sotto-keyfile-v1";

/// Argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory, KiB.
    pub m_kib: u32,
    /// Passes.
    pub t: u32,
    /// Lanes.
    pub p: u32,
}

impl KdfParams {
    /// The least cost any new store gets: 64 MiB, 3 passes, 1 lane.
    pub const MINIMUM: KdfParams = KdfParams {
        m_kib: 64 * 1024,
        t: 3,
        p: 1,
    };

    /// How long one passcode guess should take on the device that creates the store.
    pub const TARGET_SECONDS: f64 = 0.5;

    /// A cheap cost for tests only; the CLI picks it solely through the explicit
    /// `SOTTO_INSECURE_TEST_KDF=1` setting, never by default.
    pub const INSECURE_TEST: KdfParams = KdfParams {
        m_kib: 64,
        t: 1,
        p: 1,
    };

    /// Most passes calibration chooses.
    const MAX_PASSES: u32 = 64;

    /// Passes timed by calibration, after a warm-up pass.
    const PROBE_PASSES: u32 = 2;

    /// The production cost, calibrated on this device: 64 MiB and as many passes as make one
    /// derivation take [`KdfParams::TARGET_SECONDS`] (never fewer than 3), so a guess costs an
    /// attacker at least that much on comparable hardware.
    pub fn calibrated() -> KdfParams {
        let mut memory = vec![argon2::Block::new(); Self::MINIMUM.m_kib as usize];
        Self::calibrate(|t| {
            let kdf = KdfParams {
                t,
                ..KdfParams::MINIMUM
            };
            let start = std::time::Instant::now();
            // Only the duration matters; the output is thrown away.
            let _ = derive_into(&mut memory, "calibration", &[0; 16], kdf);
            start.elapsed()
        })
    }

    /// Chooses the passes from `time(t)`, the time of a derivation of `t` passes run in the
    /// same memory each time. The first run also faults in 64 MiB of fresh memory: an unlock
    /// pays that once, not per pass, so it is run once untimed and the passes are timed warm.
    /// (Timing one cold pass overestimated a pass and gave unlocks of 0.18-0.24 s here.)
    fn calibrate(mut time: impl FnMut(u32) -> std::time::Duration) -> KdfParams {
        time(1);
        let per_pass = time(Self::PROBE_PASSES).as_secs_f64() / f64::from(Self::PROBE_PASSES);
        let passes = (Self::TARGET_SECONDS / per_pass.max(1e-4)).ceil();
        KdfParams {
            t: (passes as u32).clamp(Self::MINIMUM.t, Self::MAX_PASSES),
            ..KdfParams::MINIMUM
        }
    }

    /// The cost for new stores: [`KdfParams::calibrated`] unless the environment holds the
    /// explicit test setting `SOTTO_INSECURE_TEST_KDF=1`.
    pub fn from_env() -> KdfParams {
        if std::env::var("SOTTO_INSECURE_TEST_KDF").as_deref() == Ok("1") {
            KdfParams::INSECURE_TEST
        } else {
            KdfParams::calibrated()
        }
    }
}

#[derive(Serialize, Deserialize)]
struct KeyFile {
    version: u32,
    kdf: KdfParams,
    salt: Bytes,
    nonce: Bytes,
    wrapped: Bytes,
}

fn argon(kdf: KdfParams) -> Result<argon2::Argon2<'static>, ClientError> {
    let params = argon2::Params::new(kdf.m_kib, kdf.t, kdf.p, Some(32))
        .map_err(|e| ClientError::Locked(format!("invalid key file parameters: {e}")))?;
    Ok(argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        params,
    ))
}

fn derive(passcode: &str, salt: &[u8], kdf: KdfParams) -> Result<Zeroizing<[u8; 32]>, ClientError> {
    let mut out = Zeroizing::new([0u8; 32]);
    argon(kdf)?
        .hash_password_into(passcode.as_bytes(), salt, out.as_mut())
        .map_err(|e| ClientError::Locked(format!("key derivation failed: {e}")))?;
    Ok(out)
}

/// [`derive`] in memory the caller keeps, for calibration.
fn derive_into(
    memory: &mut [argon2::Block],
    passcode: &str,
    salt: &[u8],
    kdf: KdfParams,
) -> Result<Zeroizing<[u8; 32]>, ClientError> {
    let mut out = Zeroizing::new([0u8; 32]);
    argon(kdf)?
        .hash_password_into_with_memory(passcode.as_bytes(), salt, out.as_mut(), memory)
        .map_err(|e| ClientError::Locked(format!("key derivation failed: {e}")))?;
    Ok(out)
}

/// Creates `path` holding a fresh random data key wrapped under `passcode`; returns the key.
pub fn create(
    path: &Path,
    passcode: &str,
    kdf: KdfParams,
) -> Result<Zeroizing<[u8; 32]>, ClientError> {
    let mut rng = rand::rngs::OsRng;
    let mut data_key = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(data_key.as_mut());
    let mut salt = [0u8; 16];
    rng.fill_bytes(&mut salt);
    let mut nonce = [0u8; 24];
    rng.fill_bytes(&mut nonce);
    let kek = derive(passcode, &salt, kdf)?;
    let wrapped = XChaCha20Poly1305::new(kek.as_ref().into())
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: data_key.as_ref(),
                aad: AAD,
            },
        )
        .map_err(|_| ClientError::Store("wrapping the data key failed".into()))?;
    let file = KeyFile {
        version: KEYFILE_VERSION,
        kdf,
        salt: salt.to_vec().into(),
        nonce: nonce.to_vec().into(),
        wrapped: wrapped.into(),
    };
    let json = serde_json::to_vec_pretty(&file).map_err(|e| ClientError::Store(e.to_string()))?;
    let failed = |e: std::io::Error| ClientError::Store(format!("{}: {e}", path.display()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(path).map_err(failed)?;
    std::io::Write::write_all(&mut f, &json).map_err(failed)?;
    f.sync_all().map_err(failed)?;
    Ok(data_key)
}

/// Unwraps the data key in `path` with `passcode`.
pub fn unlock(path: &Path, passcode: &str) -> Result<Zeroizing<[u8; 32]>, ClientError> {
    let raw = std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ClientError::Usage(format!(
            "no Sotto account in {}; run `sotto init` first, or pass --home",
            path.parent().unwrap_or(path).display()
        )),
        _ => ClientError::Store(format!("{}: {e}", path.display())),
    })?;
    let file: KeyFile = serde_json::from_slice(&raw)
        .map_err(|_| ClientError::Locked("the key file is damaged".into()))?;
    if file.version != KEYFILE_VERSION {
        return Err(ClientError::Locked(format!(
            "key file version {} is not supported",
            file.version
        )));
    }
    let kek = derive(passcode, file.salt.as_slice(), file.kdf)?;
    if file.nonce.len() != 24 {
        return Err(ClientError::Locked("the key file is damaged".into()));
    }
    let key = XChaCha20Poly1305::new(kek.as_ref().into())
        .decrypt(
            XNonce::from_slice(file.nonce.as_slice()),
            Payload {
                msg: file.wrapped.as_slice(),
                aad: AAD,
            },
        )
        .map_err(|_| ClientError::Locked("wrong passcode".into()))?;
    let key = Zeroizing::new(key);
    if key.len() != 32 {
        return Err(ClientError::Locked("the key file is damaged".into()));
    }
    // Copied straight into wiped memory: no stray copy of the key on the stack.
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(&key);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calibration_on_this_machine_stays_within_its_bounds() {
        let k = KdfParams::calibrated();
        assert_eq!((k.m_kib, k.p), (64 * 1024, 1));
        assert!((3..=64).contains(&k.t), "{k:?}");
    }

    #[test]
    fn calibration_times_passes_on_warm_memory_not_the_first_cold_one() {
        use std::time::Duration;
        // A device whose first derivation pays 200 ms of page faults and whose passes then
        // take 30 ms each: 0.5 s needs 17 passes, not the 3 a cold pass would suggest.
        let mut first = true;
        let k = KdfParams::calibrate(|t| {
            let faults = if std::mem::take(&mut first) { 200 } else { 0 };
            Duration::from_millis(faults + 30 * u64::from(t))
        });
        assert_eq!(k.t, 17);
        // Very fast and very slow devices stay within bounds.
        assert_eq!(KdfParams::calibrate(|_| Duration::from_secs(5)).t, 3);
        assert_eq!(KdfParams::calibrate(|_| Duration::ZERO).t, 64);
    }

    /// The key file is a frozen format: a file written by an earlier Sotto must unlock to
    /// the same key and re-encode to the same bytes. A change needs a new `KEYFILE_VERSION`.
    #[test]
    fn the_key_file_format_is_frozen() {
        let vectors = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors");
        let raw = std::fs::read(vectors.join("keyfile.json")).unwrap();
        let expected = std::fs::read_to_string(vectors.join("keyfile.key")).unwrap();
        let key = unlock(&vectors.join("keyfile.json"), "correct horse battery").unwrap();
        assert_eq!(hex::encode(key.as_ref()), expected.trim_end());
        let file: KeyFile = serde_json::from_slice(&raw).unwrap();
        assert_eq!(serde_json::to_vec_pretty(&file).unwrap(), raw);
    }

    #[test]
    fn wrong_passcode_and_damaged_files_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyfile.json");
        let key = create(&path, "right", KdfParams::INSECURE_TEST).unwrap();
        assert_eq!(*unlock(&path, "right").unwrap(), *key);
        assert!(matches!(
            unlock(&path, "wrong"),
            Err(ClientError::Locked(_))
        ));
        let mut file: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        file["kdf"]["t"] = 2.into();
        std::fs::write(&path, serde_json::to_vec(&file).unwrap()).unwrap();
        assert!(matches!(
            unlock(&path, "right"),
            Err(ClientError::Locked(_))
        ));
        std::fs::write(&path, b"{").unwrap();
        assert!(matches!(
            unlock(&path, "right"),
            Err(ClientError::Locked(_))
        ));
    }
}
