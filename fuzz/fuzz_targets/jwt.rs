//! Bearer tokens through the verifier every service uses, with a fixed Ed25519 key set and
//! neither Redis nor a database. Two ways in: the input as the token itself (nothing the
//! fuzzer writes is signed, so nothing may be accepted), or the input as a header and claims
//! that this target signs with the known key (so the claims checks are reached): a token is
//! accepted only with EdDSA, the known key id, our issuer and audience, a user id subject
//! and an expiry not past.
#![no_main]

use std::sync::OnceLock;

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use ed25519_dalek::{Signer as _, SigningKey};
use jsonwebtoken::DecodingKey;
use libfuzzer_sys::fuzz_target;
use sakuga_mesh::auth::{AUDIENCE, Caller, ISSUER, KeySet, Verifier, now_secs};
use serde_json::Value;

const KID: &str = "fuzz-key";

struct Fixture {
    key: SigningKey,
    verifier: Verifier,
    runtime: tokio::runtime::Runtime,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let key = SigningKey::from_bytes(&[7; 32]);
        let x = URL_SAFE_NO_PAD.encode(key.verifying_key().to_bytes());
        let mut keys = KeySet::new();
        keys.insert(KID.to_owned(), DecodingKey::from_ed_components(&x).unwrap());
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        Fixture { key, verifier: Verifier::with_keys(keys, None, None), runtime }
    })
}

// Input: one byte (even: the rest is the token as sent; odd: the rest is a header, a NUL
// byte and claims, signed here), as `fuzz/seeds.py` writes them.
fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let Some((&mode, rest)) = data.split_first() else { return };
    if mode & 1 == 0 {
        let token = String::from_utf8_lossy(rest);
        let result = f.runtime.block_on(f.verifier.verify(&token));
        assert!(result.is_err(), "an unsigned token was accepted: {token:?}");
        return;
    }
    let (header, claims) = match rest.iter().position(|&b| b == 0) {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, &[][..]),
    };
    let signing_input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(claims));
    let signature = f.key.sign(signing_input.as_bytes());
    let token = format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()));
    let before = now_secs();
    let Ok(caller) = f.runtime.block_on(f.verifier.verify(&token)) else { return };
    let header: Value = serde_json::from_slice(header).expect("accepted header is JSON");
    let claims: Value = serde_json::from_slice(claims).expect("accepted claims are JSON");
    assert_eq!(header["alg"], "EdDSA");
    assert_eq!(header["kid"], KID);
    assert_eq!(claims["iss"], ISSUER);
    assert_eq!(claims["aud"], AUDIENCE);
    let exp = claims["exp"].as_f64().expect("accepted tokens have a numeric exp");
    #[allow(clippy::cast_precision_loss)]
    let oldest = (before - 5) as f64;
    assert!(exp >= oldest, "an expired token was accepted");
    let Caller::User { id, .. } = caller else { panic!("a token made a non-user caller") };
    assert_eq!(claims["sub"].as_str().map(uuid::Uuid::parse_str).and_then(Result::ok), Some(id));
});
