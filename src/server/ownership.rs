//! Proof of ownership of a visitor's Machine.
//!
//! The launcher mints a random [`OwnerSecret`] per launch and gives the Machine only its
//! [`OwnerHash`] (through the Machine's env), the browser only the secret (through the
//! hand-over). Knowing a Machine's id or URL is therefore not enough to reach it, and the
//! Machine holds nothing that would let someone impersonate its owner. A Machine of the warm
//! pool gets the hash later, once, from its launcher ([`OwnerSlot`]).

use sha2::{Digest, Sha256};
use std::{
    fmt,
    sync::{Arc, OnceLock},
};
use subtle::ConstantTimeEq;

/// 32 random bytes, written as 64 lowercase hex characters (cookie- and form-safe).
#[derive(Clone, PartialEq, Eq)]
pub struct OwnerSecret(String);

/// The SHA-256 of an owner secret's text.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct OwnerHash([u8; 32]);

/// A string that is not 64 lowercase hex characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected 64 lowercase hex characters")]
pub struct InvalidOwnerToken;

fn is_lower_hex_64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl OwnerSecret {
    /// A fresh secret from the OS's CSPRNG.
    pub fn mint() -> Self {
        let bytes: [u8; 32] = rand::random();
        OwnerSecret(hex::encode(bytes))
    }

    pub fn parse(s: &str) -> Result<Self, InvalidOwnerToken> {
        if is_lower_hex_64(s) {
            Ok(OwnerSecret(s.to_owned()))
        } else {
            Err(InvalidOwnerToken)
        }
    }

    pub fn hash(&self) -> OwnerHash {
        OwnerHash(Sha256::digest(self.0.as_bytes()).into())
    }

    /// The secret itself: only for the cookie and the hand-over form, never for a log.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Secrets never print, not even by accident in a `{:?}`.
impl fmt::Debug for OwnerSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OwnerSecret(<hidden>)")
    }
}

impl OwnerHash {
    pub fn parse(s: &str) -> Result<Self, InvalidOwnerToken> {
        if !is_lower_hex_64(s) {
            return Err(InvalidOwnerToken);
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(s, &mut bytes).map_err(|_| InvalidOwnerToken)?;
        Ok(OwnerHash(bytes))
    }

    /// Whether `secret` (as presented by a client, unvalidated) is the one this hash was made
    /// from. The comparison of the digests takes the same time wherever they differ.
    pub fn verifies(&self, secret: &str) -> bool {
        let presented: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        bool::from(self.0.ct_eq(&presented)) && is_lower_hex_64(secret)
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// Whose this Machine is. A visitor's Machine knows from its config (the hash its launcher
/// wrote there); a Machine of the warm pool was created before its owner existed, so its
/// launcher arms it, once, over the private network (`server::arming`). Shared by the hand-over
/// and the affinity layer, which read it on every request.
#[derive(Clone, Default)]
pub struct OwnerSlot(Arc<OnceLock<OwnerHash>>);

/// A Machine already armed for someone else is never armed again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("this Machine already has an owner")]
pub struct AlreadyArmed;

impl OwnerSlot {
    /// A Machine whose owner is known from the start.
    pub fn of(owner: OwnerHash) -> Self {
        let slot = OwnerSlot::default();
        let _ = slot.0.set(owner);
        slot
    }

    pub fn get(&self) -> Option<OwnerHash> {
        self.0.get().copied()
    }

    /// Makes `owner` this Machine's owner, for good. Arming again for the same owner is a
    /// success (a launcher's retry after a lost answer); for anyone else, refused.
    pub fn arm(&self, owner: OwnerHash) -> Result<(), AlreadyArmed> {
        match self.0.set(owner) {
            Ok(()) => Ok(()),
            Err(_) if self.get() == Some(owner) => Ok(()),
            Err(_) => Err(AlreadyArmed),
        }
    }
}

impl fmt::Debug for OwnerSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("OwnerSlot").field(&self.get()).finish()
    }
}

impl fmt::Debug for OwnerHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OwnerHash({})", self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_verifies_against_its_own_hash_only() {
        let secret = OwnerSecret::mint();
        let other = OwnerSecret::mint();
        assert_ne!(secret, other);
        let hash = OwnerHash::parse(&secret.hash().to_hex()).unwrap();
        assert!(hash.verifies(secret.expose()));
        assert!(!hash.verifies(other.expose()));
        assert!(!hash.verifies(""));
        assert!(!hash.verifies(&secret.expose().to_uppercase()));
    }

    #[test]
    fn a_slot_is_armed_once_and_for_one_owner_only() {
        let (owner, stranger) = (OwnerSecret::mint().hash(), OwnerSecret::mint().hash());
        let slot = OwnerSlot::default();
        assert_eq!(slot.get(), None);
        assert_eq!(slot.arm(owner), Ok(()));
        assert_eq!(slot.arm(owner), Ok(()), "a retry of the same arming");
        assert_eq!(slot.arm(stranger), Err(AlreadyArmed));
        assert_eq!(slot.get(), Some(owner));
        // A clone is the same slot: what the hand-over arms, the affinity layer sees.
        let fixed = OwnerSlot::of(owner);
        assert_eq!(fixed.clone().arm(stranger), Err(AlreadyArmed));
        assert_eq!(fixed.get(), Some(owner));
    }

    #[test]
    fn tokens_are_64_lowercase_hex() {
        assert!(OwnerSecret::parse(&"a".repeat(64)).is_ok());
        for bad in ["", "abc", &"A".repeat(64), &"g".repeat(64), &"a".repeat(65)] {
            assert_eq!(OwnerSecret::parse(bad), Err(InvalidOwnerToken), "{bad}");
            assert_eq!(OwnerHash::parse(bad), Err(InvalidOwnerToken), "{bad}");
        }
    }

    #[test]
    fn secrets_do_not_print() {
        let secret = OwnerSecret::mint();
        assert!(!format!("{secret:?}").contains(secret.expose()));
    }
}
