//! Signing keys from Vault: Ed25519, several published (JWKS) so the signing key can rotate
//! while tokens signed by the previous one stay valid until they expire.

use std::collections::HashMap;

use base64::Engine as _;
use ed25519_dalek::{SigningKey, pkcs8::DecodePrivateKey as _};
use jsonwebtoken::{DecodingKey, EncodingKey};
use sakuga_mesh::{MeshError, auth::KeySet};

/// A published verification key: the public half of an Ed25519 signing key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    /// Key id (`kid` of the tokens it verifies).
    pub kid: String,
    /// The public key, base64url without padding (a JWK's `x`).
    pub x: String,
}

/// The keys of this auth instance.
pub struct SigningKeys {
    /// Key id of the signing key.
    pub active: String,
    encoding: EncodingKey,
    /// Every public key, for GetJwks.
    pub public: Vec<PublicKey>,
}

impl std::fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKeys").field("active", &self.active).finish_non_exhaustive()
    }
}

impl SigningKeys {
    /// Parses the KV secret: `active` = key id, every other field a PKCS#8 PEM key.
    pub fn from_secret(mut fields: HashMap<String, String>) -> Result<Self, MeshError> {
        let bad = |why: String| MeshError::Config(format!("signing keys: {why}"));
        let active = fields
            .remove("active")
            .ok_or_else(|| bad("field `active` (the signing key id) is missing".into()))?;
        let mut public = Vec::new();
        let mut encoding = None;
        let mut kids: Vec<&String> = fields.keys().collect();
        kids.sort();
        for kid in kids {
            let pem = &fields[kid];
            let key = SigningKey::from_pkcs8_pem(pem)
                .map_err(|e| bad(format!("key {kid}: not an Ed25519 PKCS#8 PEM key ({e})")))?;
            let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.verifying_key().to_bytes());
            public.push(PublicKey { kid: kid.clone(), x });
            if *kid == active {
                encoding = Some(
                    EncodingKey::from_ed_pem(pem.as_bytes()).map_err(|e| bad(format!("key {kid}: {e}")))?,
                );
            }
        }
        let encoding =
            encoding.ok_or_else(|| bad(format!("the active key {active} is not among the keys")))?;
        Ok(Self { active, encoding, public })
    }

    /// The signing key.
    pub fn encoding(&self) -> &EncodingKey {
        &self.encoding
    }

    /// Verification keys by kid.
    pub fn decoding(&self) -> Result<KeySet, MeshError> {
        self.public
            .iter()
            .map(|k| {
                DecodingKey::from_ed_components(&k.x)
                    .map(|d| (k.kid.clone(), d))
                    .map_err(|e| MeshError::Config(format!("key {}: {e}", k.kid)))
            })
            .collect()
    }
}
