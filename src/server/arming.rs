//! How a Machine of the warm pool learns whose it is. It was created before its owner existed,
//! so no config can hold the owner's hash; and the owner's secret must never be in a config, a
//! URL or a log. Once a launcher has started it for a visitor, it sends the owner's hash (never
//! the secret) to the Machine's private address, `POST /_flyby/arm`, with a fresh challenge and
//! the [`arm_proof`] of the three under the Machine's own key (`FLYBY_READINESS_KEY`, in its
//! config, which only the org's token can read). The Machine checks the proof, takes the hash
//! for good ([`crate::server::ownership::OwnerSlot`]), and answers with the readiness proof of
//! the challenge, so that the launcher knows it armed the Machine it started.
//!
//! So: before arming nobody is the owner (every page answers 403, a claim is refused); arming
//! needs the Machine's key, which no visitor can learn; after arming only the secret of that
//! hash claims it. A pooled Machine nobody arms switches itself off at the end of its claim
//! window, as any Machine nobody claims.

use crate::server::{
    ownership::OwnerHash,
    readiness::{Challenge, ReadinessKey},
};
use http::HeaderName;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Where a launcher arms a pooled Machine (on its private address; through the proxy it is
/// refused like any request without the key's proof).
pub const ARM_PATH: &str = "/_flyby/arm";
/// The owner's hash, 64 lowercase hex.
pub const OWNER_HASH_HEADER: HeaderName = HeaderName::from_static("flyby-owner-hash");
/// [`arm_proof`] of the challenge and the hash under the Machine's key.
pub const ARM_PROOF_HEADER: HeaderName = HeaderName::from_static("flyby-arm-proof");

/// SHA-256 of the challenge, the word `arm`, the owner's hash and the key, colon-separated, in
/// hex. The random challenge comes first and the key last, as in the readiness proof; the
/// word keeps an arm proof from ever passing as a readiness proof.
pub fn arm_proof(key: &ReadinessKey, challenge: &Challenge, owner: &OwnerHash) -> String {
    let mut digest = Sha256::new();
    for part in [challenge.as_str(), "arm", &owner.to_hex()] {
        digest.update(part.as_bytes());
        digest.update(b":");
    }
    digest.update(key.expose().as_bytes());
    hex::encode(digest.finalize())
}

/// The Machine's check of an arming request's headers: the owner's hash it may take, when the
/// proof is right. Compared in constant time.
pub fn verified_owner(key: &ReadinessKey, headers: &http::HeaderMap) -> Option<OwnerHash> {
    let header = |name: &HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let challenge = Challenge::parse(header(&crate::server::readiness::CHALLENGE_HEADER)?).ok()?;
    let owner = OwnerHash::parse(header(&OWNER_HASH_HEADER)?).ok()?;
    let presented = header(&ARM_PROOF_HEADER)?;
    let expected = arm_proof(key, &challenge, &owner);
    bool::from(expected.as_bytes().ct_eq(presented.as_bytes())).then_some(owner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::{
        ownership::OwnerSecret,
        readiness::{self, CHALLENGE_HEADER},
    };

    fn request(challenge: &Challenge, owner: &OwnerHash, proof: &str) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        headers.insert(CHALLENGE_HEADER, challenge.as_str().parse().unwrap());
        headers.insert(OWNER_HASH_HEADER, owner.to_hex().parse().unwrap());
        headers.insert(ARM_PROOF_HEADER, proof.parse().unwrap());
        headers
    }

    #[test]
    fn only_the_machines_own_key_arms_it_and_for_the_hash_proved() {
        let (key, other_key) = (ReadinessKey::mint(), ReadinessKey::mint());
        let (owner, stranger) = (OwnerSecret::mint().hash(), OwnerSecret::mint().hash());
        let challenge = Challenge::mint();
        let proof = arm_proof(&key, &challenge, &owner);
        assert_eq!(
            verified_owner(&key, &request(&challenge, &owner, &proof)),
            Some(owner)
        );
        // Another Machine's key, another hash under this proof, a readiness proof, no proof.
        assert_eq!(
            verified_owner(&other_key, &request(&challenge, &owner, &proof)),
            None
        );
        assert_eq!(
            verified_owner(&key, &request(&challenge, &stranger, &proof)),
            None
        );
        let readiness = readiness::proof(&key, &challenge);
        assert_eq!(
            verified_owner(&key, &request(&challenge, &owner, &readiness)),
            None
        );
        let mut bare = request(&challenge, &owner, &proof);
        bare.remove(ARM_PROOF_HEADER);
        assert_eq!(verified_owner(&key, &bare), None);
        // The proof tells nothing of the key: it is a digest, and never the key itself.
        assert!(!proof.contains(key.expose()));
    }
}
