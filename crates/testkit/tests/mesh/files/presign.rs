//! GetDownloadUrl: a presigned URL of a file's bytes on the S3 backend (fetched from
//! SeaweedFS without a token), checked and audited like a read, refused on local disk.

use std::time::Duration;

use sakuga_proto::v1::{GetDownloadUrlRequest, GetDownloadUrlResponse, ReadFileRequest};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::Code;

use super::{eventually, gradient, header, keys_of, leased_job, store};
use crate::common::{Backend, Mesh};

/// A plain HTTP/1.0 GET of an `http://` URL, as a client without credentials sends it; the
/// `Host` header is the URL's unless `host` names another. Returns the status and the body.
async fn http_get(url: &str, host: Option<&str>) -> (u16, Vec<u8>) {
    let rest = url.strip_prefix("http://").unwrap_or_else(|| panic!("not an http URL: {url}"));
    let (authority, target) = rest.split_at(rest.find('/').unwrap());
    let mut conn = tokio::net::TcpStream::connect(authority).await.unwrap();
    let req = format!("GET {target} HTTP/1.0\r\nHost: {}\r\n\r\n", host.unwrap_or(authority));
    conn.write_all(req.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer).await.unwrap();
    let end = answer.windows(4).position(|w| w == b"\r\n\r\n").expect("an HTTP answer");
    let head = String::from_utf8_lossy(&answer[..end]).into_owned();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{head}"));
    (status, answer[end + 4..].to_vec())
}

async fn download_url(
    mesh: &Mesh,
    token: &str,
    file_id: &str,
    ttl: Option<Duration>,
) -> Result<GetDownloadUrlResponse, tonic::Status> {
    let ttl = ttl.map(|d| prost_types::Duration::try_from(d).unwrap());
    let req = GetDownloadUrlRequest { file_id: file_id.to_owned(), ttl };
    Ok(mesh.files(token).get_download_url(req).await?.into_inner())
}

#[tokio::test]
async fn the_owner_and_an_admin_get_a_url_of_the_bytes_that_expires_and_others_get_what_read_file_says() {
    let mesh = Mesh::on(Backend::S3).await;
    let (alice, bob) = (mesh.person("alice").await, mesh.person("bob").await);
    let bytes = gradient(96, 64);
    let sha = hex::encode(Sha256::digest(&bytes));
    let job = leased_job(&mesh, &alice.id, None, 96, 64).await;
    let f = store(&mesh, header(&job, &bytes, 96, 64), &bytes).await.unwrap();

    // The owner's URL, at the default TTL, reads the bytes without a token.
    let before = chrono::Utc::now().timestamp();
    let got = download_url(&mesh, &alice.token, &f.id, None).await.unwrap();
    let after = chrono::Utc::now().timestamp();
    assert_eq!(
        (got.size_bytes, got.sha256.as_str(), got.mime_type.as_str()),
        (bytes.len() as u64, sha.as_str(), "image/png")
    );
    let expires = got.expire_time.as_ref().unwrap().seconds;
    assert!((before + 300..=after + 300).contains(&expires), "the default is five minutes: {expires}");
    let (status, body) = http_get(&got.url, None).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(hex::encode(Sha256::digest(&body)), sha);
    // It points at the content-addressed bytes under the organizer's prefix.
    let blob_key = keys_of(&mesh, &f.id).await.1.unwrap();
    let prefix = &mesh.organizer_config().storage.s3.prefix;
    assert!(got.url.contains(&format!("/{prefix}/{blob_key}?")), "{}", got.url);

    // Another user gets exactly what ReadFile answers them; an admin gets a URL.
    let read = mesh
        .files(&bob.token)
        .read_file(ReadFileRequest { file_id: f.id.clone(), offset: 0, length: 0 })
        .await
        .map(|_| ())
        .unwrap_err();
    let refused = download_url(&mesh, &bob.token, &f.id, None).await.unwrap_err();
    assert_eq!((refused.code(), refused.message()), (read.code(), read.message()));
    assert_eq!(refused.code(), Code::NotFound);
    let by_admin = download_url(&mesh, &mesh.admin_token, &f.id, Some(Duration::from_mins(1))).await.unwrap();
    let (status, body) = http_get(&by_admin.url, None).await;
    assert_eq!((status, hex::encode(Sha256::digest(&body))), (200, sha.clone()));

    // A TTL above the maximum (an hour) is refused, naming the field; so is a negative one.
    let err = download_url(&mesh, &alice.token, &f.id, Some(Duration::from_secs(3601))).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("ttl: ") && err.message().contains("download_url_max_ttl"), "{err:?}");
    let negative = GetDownloadUrlRequest {
        file_id: f.id.clone(),
        ttl: Some(prost_types::Duration { seconds: -5, nanos: 0 }),
    };
    let err = mesh.files(&alice.token).get_download_url(negative).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("ttl: "), "{err:?}");

    // A one-second URL is refused by the store once it expired, while one signed beside it
    // for longer still works: the refusal is the expiry, not the signature.
    let short = download_url(&mesh, &alice.token, &f.id, Some(Duration::from_secs(1))).await.unwrap();
    let long = download_url(&mesh, &alice.token, &f.id, Some(Duration::from_mins(10))).await.unwrap();
    assert!(short.expire_time.as_ref().unwrap().seconds <= chrono::Utc::now().timestamp() + 1);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (status, body) = http_get(&short.url, None).await;
    assert_eq!(status, 403, "an expired URL: {}", String::from_utf8_lossy(&body));
    assert_ne!(hex::encode(Sha256::digest(&body)), sha);
    assert_eq!(http_get(&long.url, None).await.0, 200);

    // Every call is in the audit log: each URL handed out with its file, the refusal too.
    let db = mesh.env.db().await.unwrap();
    let (db, file_id, alice_id) = (&db, &f.id, &alice.id);
    eventually("the URLs handed out are audited", || async move {
        let sql = "SELECT count(*) FILTER (WHERE actor = $2), count(*) FROM audit_events \
                   WHERE action = 'FileService.GetDownloadUrl' AND result = 'OK' AND target = 'file:' || $1";
        let row = db.query_one(sql, &[file_id, alice_id]).await.unwrap();
        (row.get::<_, i64>(0), row.get::<_, i64>(1)) == (3, 4)
    })
    .await;
    eventually("the refusals are audited", || async move {
        let sql = "SELECT count(*) FROM audit_events WHERE action = 'FileService.GetDownloadUrl' \
                   AND result IN ('NOT_FOUND', 'INVALID_ARGUMENT')";
        db.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) == 3
    })
    .await;

    // Bytes gone from the store: DATA_LOSS, as ReadFile, not a URL that answers 404.
    mesh.storage().await.delete(&blob_key).await.unwrap();
    let err = download_url(&mesh, &alice.token, &f.id, None).await.unwrap_err();
    assert_eq!(err.code(), Code::DataLoss, "{err:?}");
    mesh.stop().await;
}

/// Behind an address clients use that is not the organizer's, URLs are signed for it.
#[tokio::test]
async fn urls_are_signed_for_the_public_endpoint_when_one_is_configured() {
    let mut mesh = Mesh::on(Backend::S3).await;
    let endpoint = mesh.weed.as_ref().unwrap().endpoint.clone();
    // The same server under another name: what a client reaches through a public address.
    let public = endpoint.replace("127.0.0.1", "localhost");
    let public_for_config = public.clone();
    mesh.restart_organizer(move |c| c.storage.s3.public_endpoint = public_for_config).await;
    let alice = mesh.person("alice").await;
    let bytes = gradient(64, 64);
    let job = leased_job(&mesh, &alice.id, None, 64, 64).await;
    let f = store(&mesh, header(&job, &bytes, 64, 64), &bytes).await.unwrap();
    let got = download_url(&mesh, &alice.token, &f.id, None).await.unwrap();
    assert!(got.url.starts_with(&format!("{public}/")), "{} is not at {public}", got.url);
    let (status, body) = http_get(&got.url, None).await;
    assert_eq!((status, body), (200, bytes));
    // The signature covers the host: sent to the organizer's address it is refused.
    let internal_host = endpoint.trim_start_matches("http://");
    assert_eq!(http_get(&got.url, Some(internal_host)).await.0, 403);
    mesh.stop().await;
}

#[tokio::test]
async fn the_local_backend_has_no_urls_and_says_to_use_read_file() {
    let mesh = Mesh::on(Backend::Local).await;
    let (alice, bob) = (mesh.person("alice").await, mesh.person("bob").await);
    let bytes = gradient(64, 64);
    let job = leased_job(&mesh, &alice.id, None, 64, 64).await;
    let f = store(&mesh, header(&job, &bytes, 64, 64), &bytes).await.unwrap();
    let err = download_url(&mesh, &alice.token, &f.id, None).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("local") && err.message().contains("ReadFile"), "{err:?}");
    assert_eq!(
        sakuga_mesh::auth::reason_of(&err).as_deref(),
        Some(sakuga_mesh::auth::DOWNLOAD_URLS_UNSUPPORTED)
    );
    // Someone else's file is not found before the backend is asked anything.
    let err = download_url(&mesh, &bob.token, &f.id, None).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    mesh.stop().await;
}
