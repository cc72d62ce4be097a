//! Safety numbers: 60 digits that two people compare to know that each holds the other's
//! real identity key. Signal's numeric fingerprint construction (version 2 of its display
//! format), with Sotto's own domain prefix: each party's half is 30 digits from an iterated
//! SHA-512 over its identity key and username; the two halves are shown in a fixed order, so
//! both sides see the same number. It depends on the identity keys only, so it stays the
//! same when devices come and go.

use sha2::{Digest, Sha512};
use sotto_proto::Username;

/// Domain separation prefix of a half.
const CONTEXT: &[u8] = b"sotto-safety-number-v1\0";

/// SHA-512 rounds per half (Signal's count: it makes a search for a colliding key slow).
const ITERATIONS: usize = 5200;

/// 30 digits for one party.
fn half(user: &Username, identity_key: &[u8; 32]) -> String {
    let mut digest = Sha512::new()
        .chain_update(CONTEXT)
        .chain_update(identity_key)
        .chain_update(user.as_str().as_bytes())
        .finalize();
    for _ in 0..ITERATIONS {
        digest = Sha512::new()
            .chain_update(digest)
            .chain_update(identity_key)
            .finalize();
    }
    digest
        .chunks_exact(5)
        .take(6)
        .map(|chunk| {
            let n = chunk.iter().fold(0u64, |n, b| (n << 8) | u64::from(*b));
            format!("{:05}", n % 100_000)
        })
        .collect()
}

/// The safety number of two accounts, as 60 digits: the same whichever side computes it.
pub fn safety_number(a: (&Username, &[u8; 32]), b: (&Username, &[u8; 32])) -> String {
    let (x, y) = (half(a.0, a.1), half(b.0, b.1));
    if x <= y { x + &y } else { y + &x }
}

/// `digits` in 12 groups of 5, as people read them.
pub fn grouped(digits: &str) -> String {
    digits
        .as_bytes()
        .chunks(5)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether `typed` (digits, with any spaces) is `number`.
pub fn matches(number: &str, typed: &str) -> bool {
    let digits: String = typed.chars().filter(|c| !c.is_whitespace()).collect();
    digits == number
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]
    use super::*;

    fn user(name: &str) -> Username {
        Username::parse(name).unwrap()
    }

    #[test]
    fn both_sides_compute_the_same_sixty_digits() {
        let (alice, bob) = (user("alice"), user("bob"));
        let n = safety_number((&alice, &[1; 32]), (&bob, &[2; 32]));
        assert_eq!(n.len(), 60);
        assert!(n.bytes().all(|b| b.is_ascii_digit()));
        assert_eq!(n, safety_number((&bob, &[2; 32]), (&alice, &[1; 32])));
        assert_eq!(grouped(&n).split(' ').count(), 12);
        assert!(matches(&n, &grouped(&n)));
    }

    #[test]
    fn another_key_or_another_name_gives_another_number() {
        let (alice, bob) = (user("alice"), user("bob"));
        let n = safety_number((&alice, &[1; 32]), (&bob, &[2; 32]));
        assert_ne!(n, safety_number((&alice, &[1; 32]), (&bob, &[3; 32])));
        assert_ne!(
            n,
            safety_number((&alice, &[1; 32]), (&user("bobby"), &[2; 32]))
        );
        assert!(!matches(&n, &n[..59]));
    }
}
