//! Proof that what answers the launcher's readiness probe is the Machine it created.
//!
//! The launcher probes a new Machine's `/health` at its private address. An address can be
//! recycled, and another process can listen on it: a plain `200 ok` does not say who answered,
//! and a visitor handed over to the wrong Machine would be handed their secret's claim to it.
//! So each launch mints a [`ReadinessKey`] that only the new Machine's config holds
//! (`FLYBY_READINESS_KEY`; not the owner's secret, which no config holds); each probe carries a
//! fresh [`Challenge`], and the Machine answers [`proof`] of the two beside its id (the
//! `flyby-machine` header). The key itself never crosses the network.

use crate::{fly::MachineId, server::MACHINE_HEADER};
use http::{HeaderMap, HeaderName};
use sha2::{Digest, Sha256};
use std::fmt;

/// The probe's challenge: 32 lowercase hex characters, fresh for each probe.
pub const CHALLENGE_HEADER: HeaderName = HeaderName::from_static("flyby-challenge");
/// The Machine's answer: [`proof`] of its key and the challenge.
pub const PROOF_HEADER: HeaderName = HeaderName::from_static("flyby-proof");

/// 32 random bytes as 64 lowercase hex characters, known to one launch and its Machine.
#[derive(Clone, PartialEq, Eq)]
pub struct ReadinessKey(String);

/// A string that is not what it should be: a key of 64, a challenge of 32 lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected {0} lowercase hex characters")]
pub struct NotHex(usize);

fn lower_hex(s: &str, len: usize) -> Result<(), NotHex> {
    let hex = s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    hex.then_some(()).ok_or(NotHex(len))
}

impl ReadinessKey {
    pub fn mint() -> Self {
        ReadinessKey(hex::encode(rand::random::<[u8; 32]>()))
    }

    pub fn parse(s: &str) -> Result<Self, NotHex> {
        lower_hex(s, 64).map(|()| ReadinessKey(s.to_owned()))
    }

    /// For the Machine's config, and nowhere else.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ReadinessKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReadinessKey(<hidden>)")
    }
}

/// One probe's challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge(String);

impl Challenge {
    pub fn mint() -> Self {
        Challenge(hex::encode(rand::random::<[u8; 16]>()))
    }

    pub fn parse(s: &str) -> Result<Self, NotHex> {
        lower_hex(s, 32).map(|()| Challenge(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The answer to `challenge` of the Machine that holds `key`: SHA-256 of the challenge, a
/// colon and the key, in hex. The challenge is random and comes first, so an answer seen on
/// the network tells nothing of the key or of the answer to another challenge.
pub fn proof(key: &ReadinessKey, challenge: &Challenge) -> String {
    let mut digest = Sha256::new();
    digest.update(challenge.0.as_bytes());
    digest.update(b":");
    digest.update(key.0.as_bytes());
    hex::encode(digest.finalize())
}

/// Whether a probe's answer headers come from `machine`, holding `key`, answering `challenge`.
pub fn answered_by(
    headers: &HeaderMap,
    machine: MachineId,
    key: &ReadinessKey,
    challenge: &Challenge,
) -> bool {
    let header = |name: &HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    header(&MACHINE_HEADER) == Some(machine.as_str())
        && header(&PROOF_HEADER) == Some(proof(key, challenge).as_str())
}

/// The Machine's side: the proof header for a probe's `headers`, when it asked with a
/// well-formed challenge.
pub fn answer(key: &ReadinessKey, headers: &HeaderMap) -> Option<http::HeaderValue> {
    let challenge = headers.get(CHALLENGE_HEADER)?.to_str().ok()?;
    let challenge = Challenge::parse(challenge).ok()?;
    http::HeaderValue::from_str(&proof(key, &challenge)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe_answer(key: &ReadinessKey, challenge: &Challenge, machine: &str) -> HeaderMap {
        let mut asked = HeaderMap::new();
        asked.insert(CHALLENGE_HEADER, challenge.as_str().parse().unwrap());
        let mut answered = HeaderMap::new();
        answered.insert(MACHINE_HEADER, machine.parse().unwrap());
        if let Some(proof) = answer(key, &asked) {
            answered.insert(PROOF_HEADER, proof);
        }
        answered
    }

    #[test]
    fn only_the_machine_with_the_key_answering_this_challenge_passes() {
        let id = MachineId::parse("0123456789abcd").unwrap();
        let (key, other_key) = (ReadinessKey::mint(), ReadinessKey::mint());
        let (challenge, earlier) = (Challenge::mint(), Challenge::mint());
        let ok = probe_answer(&key, &challenge, id.as_str());
        assert!(answered_by(&ok, id, &key, &challenge));
        // Another Machine's key, another Machine's id, a replayed earlier answer: no.
        let other = probe_answer(&other_key, &challenge, id.as_str());
        assert!(!answered_by(&other, id, &key, &challenge));
        let wrong_id = probe_answer(&key, &challenge, "fedcba98765432");
        assert!(!answered_by(&wrong_id, id, &key, &challenge));
        let replayed = probe_answer(&key, &earlier, id.as_str());
        assert!(!answered_by(&replayed, id, &key, &challenge));
        // A plain 200 with no headers, as any process would answer.
        assert!(!answered_by(&HeaderMap::new(), id, &key, &challenge));
    }

    #[test]
    fn the_answer_never_contains_the_key_and_a_bad_challenge_gets_none() {
        let key = ReadinessKey::mint();
        let challenge = Challenge::mint();
        assert!(!proof(&key, &challenge).contains(key.expose()));
        assert!(!format!("{key:?}").contains(key.expose()));
        for bad in ["", "xyz", &"A".repeat(32), &"a".repeat(33)] {
            let mut asked = HeaderMap::new();
            asked.insert(CHALLENGE_HEADER, bad.parse().unwrap());
            assert_eq!(answer(&key, &asked), None, "{bad:?}");
        }
        assert!(ReadinessKey::parse(&"a".repeat(63)).is_err());
        assert!(ReadinessKey::parse(key.expose()).is_ok());
    }
}
