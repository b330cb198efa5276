//! The `model` kind's layer against a real HTTP server on 127.0.0.1 with
//! injected faults. Every fault ends with either a verified file at the
//! destination or no file there and an error a user can act on; both the
//! file system and the message are checked.

use crate::support::httpfix;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use httpfix::{Fault, HttpFixture, Route, RunningServer};
use plasma::download::{
    Credential, DownloadError, DownloadOptions, DownloadRequest, Expected, NoProgress, Progress,
    SecretToken, copy_from_source, download, meta_path, part_path,
};
use plasma::filekind::FileKind;
use plasma::hashing::{FileKey, Sha256Digest, hash_file, hash_files_parallel};
use plasma::safetensors::{Architecture, SafetensorsError, read_header};
use plasma::size::ExpectedSize;

const TOKEN: &str = "plasma-TEST-TOKEN-must-never-leak-5f0c2e";
const BODY_LEN: usize = 2 * 1024 * 1024 + 123;

/// The body every route serves unless a test says otherwise.
fn body() -> Vec<u8> {
    httpfix::safetensors_file(BODY_LEN, 0x1234_5678)
}

fn fast_options() -> DownloadOptions {
    DownloadOptions {
        max_attempts: 3,
        first_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
        stall_timeout: Duration::from_secs(20),
        connect_timeout: Duration::from_secs(5),
        ..DownloadOptions::default()
    }
}

struct Case {
    _dir: tempfile::TempDir,
    dest: PathBuf,
}

fn case() -> Case {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("models/checkpoints/model.safetensors");
    Case { _dir: dir, dest }
}

fn request(urls: Vec<String>, dest: &Path, sha: Option<Sha256Digest>) -> DownloadRequest {
    let mut request = DownloadRequest::new(urls, dest);
    request.expected.sha256 = sha;
    request.options = fast_options();
    request
}

async fn serve(route: Route) -> RunningServer {
    HttpFixture::new().route("/m", route).start().await
}

/// Nothing at the destination and no leftovers beside it.
fn assert_nothing_placed(dest: &Path) {
    assert!(!dest.exists(), "{} should not exist", dest.display());
    assert!(!part_path(dest).exists(), "the part should be gone");
    assert!(!meta_path(dest).exists(), "the sidecar should be gone");
}

fn assert_verified(dest: &Path, expected: &[u8]) {
    assert_eq!(std::fs::read(dest).unwrap(), expected);
    assert!(!part_path(dest).exists());
    assert!(!meta_path(dest).exists());
}

fn assert_no_token(error: &DownloadError) {
    let shown = format!("{error} / {error:?}");
    assert!(!shown.contains(TOKEN), "token leaked: {shown}");
}

#[tokio::test]
async fn downloads_verifies_and_places_the_file() {
    let data = body();
    let server = serve(Route::new(data.clone())).await;
    let case = case();
    let sha = Sha256Digest::of_bytes(&data);
    let progress = RecordingProgress::default();
    let digest = download(
        &request(vec![server.url("/m")], &case.dest, Some(sha)),
        &progress,
    )
    .await
    .unwrap();
    assert_eq!(digest, sha);
    assert_verified(&case.dest, &data);
    assert_eq!(
        *progress.starts.lock().unwrap(),
        vec![Some(BODY_LEN as u64)]
    );
    assert_eq!(*progress.bytes.lock().unwrap(), BODY_LEN as u64);
}

#[tokio::test]
async fn without_expected_digest_returns_the_one_it_computed() {
    let data = body();
    let server = serve(Route::new(data.clone())).await;
    let case = case();
    let digest = download(
        &request(vec![server.url("/m")], &case.dest, None),
        &NoProgress,
    )
    .await
    .unwrap();
    assert_eq!(digest, Sha256Digest::of_bytes(&data));
    assert_eq!(hash_file(&case.dest).unwrap(), digest);
}

#[tokio::test]
async fn dropped_connection_resumes_with_range_and_the_hash_covers_everything() {
    let data = body();
    let route = Route::new(data.clone())
        .fault(Fault::DropAfter(700_000))
        .times(1);
    let etag = route.etag().to_string();
    let server = serve(route).await;
    let case = case();
    let sha = Sha256Digest::of_bytes(&data);
    let progress = RecordingProgress::default();
    let digest = download(
        &request(vec![server.url("/m")], &case.dest, Some(sha)),
        &progress,
    )
    .await
    .unwrap();
    assert_eq!(digest, sha);
    assert_verified(&case.dest, &data);
    let total = Some(BODY_LEN as u64);
    assert_eq!(*progress.starts.lock().unwrap(), vec![total, total]);
    assert_eq!(
        *progress.bytes.lock().unwrap(),
        BODY_LEN as u64,
        "resumed bytes counted once"
    );
    let seen = server.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].range, None);
    assert_eq!(seen[1].range.as_deref(), Some("bytes=700000-"));
    assert_eq!(seen[1].if_range.as_deref(), Some(etag.as_str()));
}

#[tokio::test]
async fn a_part_left_by_an_earlier_run_is_resumed_and_rehashed() {
    let data = body();
    let server = serve(
        Route::new(data.clone())
            .fault(Fault::DropAfter(1_000_000))
            .times(1),
    )
    .await;
    let case = case();
    let sha = Sha256Digest::of_bytes(&data);
    let mut first = request(vec![server.url("/m")], &case.dest, Some(sha));
    first.options.max_attempts = 1;
    let error = download(&first, &NoProgress).await.unwrap_err();
    assert!(
        matches!(error, DownloadError::Network { attempts: 1, .. }),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .contains("(1000000 bytes are kept and the next run resumes from there)"),
        "{error}"
    );
    assert!(!case.dest.exists());
    assert_eq!(
        std::fs::metadata(part_path(&case.dest)).unwrap().len(),
        1_000_000
    );
    assert!(meta_path(&case.dest).exists());

    let second = request(vec![server.url("/m")], &case.dest, Some(sha));
    assert_eq!(download(&second, &NoProgress).await.unwrap(), sha);
    assert_verified(&case.dest, &data);
    assert_eq!(
        server.requests()[1].range.as_deref(),
        Some("bytes=1000000-")
    );
}

#[tokio::test]
async fn a_complete_part_left_before_its_rename_is_fetched_again() {
    let data = body();
    // The whole body arrives but the announced length is one more: the part
    // ends up complete yet unplaced, as if the run died before the rename.
    let route = Route::new(data.clone())
        .fault(Fault::ShortBody { extra: 1 })
        .times(1);
    let server = serve(route).await;
    let case = case();
    let sha = Sha256Digest::of_bytes(&data);
    let mut first = request(vec![server.url("/m")], &case.dest, Some(sha));
    first.options.max_attempts = 1;
    download(&first, &NoProgress).await.unwrap_err();
    assert_eq!(
        std::fs::metadata(part_path(&case.dest)).unwrap().len(),
        BODY_LEN as u64
    );

    let second = request(vec![server.url("/m")], &case.dest, Some(sha));
    assert_eq!(download(&second, &NoProgress).await.unwrap(), sha);
    assert_verified(&case.dest, &data);
    let ranges: Vec<Option<String>> = server.requests().into_iter().map(|r| r.range).collect();
    assert_eq!(
        ranges,
        [None, Some(format!("bytes={BODY_LEN}-")), None],
        "416, then from zero"
    );
}

#[tokio::test]
async fn without_validators_a_part_resumes_within_a_run_but_not_across_runs() {
    let data = body();
    let sha = Sha256Digest::of_bytes(&data);
    let route = Route::new(data.clone())
        .without_validators()
        .fault(Fault::DropAfter(400_000))
        .times(1);
    let server = serve(route).await;

    // Within a run: the retry asks for the rest, with no If-Range to give.
    let case1 = case();
    download(
        &request(vec![server.url("/m")], &case1.dest, Some(sha)),
        &NoProgress,
    )
    .await
    .unwrap();
    assert_verified(&case1.dest, &data);
    let seen = server.requests();
    assert_eq!(seen[1].range.as_deref(), Some("bytes=400000-"));
    assert_eq!(seen[1].if_range, None);

    // Across runs: nothing proves the old bytes still match, so start over.
    let case2 = case();
    std::fs::create_dir_all(case2.dest.parent().unwrap()).unwrap();
    std::fs::write(part_path(&case2.dest), &data[..1000]).unwrap();
    download(
        &request(vec![server.url("/m")], &case2.dest, Some(sha)),
        &NoProgress,
    )
    .await
    .unwrap();
    assert_verified(&case2.dest, &data);
    assert_eq!(server.requests().last().unwrap().range, None);
}

#[tokio::test]
async fn a_file_changed_on_the_server_is_not_spliced_onto_an_old_part() {
    let old = body();
    let server = serve(
        Route::new(old.clone())
            .fault(Fault::DropAfter(800_000))
            .times(1),
    )
    .await;
    let case = case();
    let mut first = request(vec![server.url("/m")], &case.dest, None);
    first.options.max_attempts = 1;
    download(&first, &NoProgress).await.unwrap_err();

    let new = httpfix::safetensors_file(BODY_LEN, 0x0bad_cafe);
    let new_route = Route::new(new.clone());
    let old_etag = Route::new(old).etag().to_string();
    assert_ne!(new_route.etag(), old_etag);
    server.replace_route("/m", new_route);

    let sha = Sha256Digest::of_bytes(&new);
    let second = request(vec![server.url("/m")], &case.dest, Some(sha));
    assert_eq!(download(&second, &NoProgress).await.unwrap(), sha);
    assert_verified(&case.dest, &new);
    let last = server.requests().pop().unwrap();
    assert_eq!(last.range.as_deref(), Some("bytes=800000-"));
    assert_eq!(
        last.if_range,
        Some(old_etag),
        "the old part's ETag guarded the resume"
    );
}

#[tokio::test]
async fn a_part_from_another_url_is_not_resumed() {
    let data = body();
    let server = serve(Route::new(data.clone())).await;
    let case = case();
    std::fs::create_dir_all(case.dest.parent().unwrap()).unwrap();
    std::fs::write(part_path(&case.dest), b"bytes of some other file").unwrap();
    std::fs::write(
        meta_path(&case.dest),
        r#"{"url_id":"00","validator":"\"x\""}"#,
    )
    .unwrap();
    let sha = Sha256Digest::of_bytes(&data);
    download(
        &request(vec![server.url("/m")], &case.dest, Some(sha)),
        &NoProgress,
    )
    .await
    .unwrap();
    assert_verified(&case.dest, &data);
    assert_eq!(server.requests()[0].range, None);
}

#[tokio::test]
async fn a_server_ignoring_range_restarts_from_zero_and_succeeds() {
    let data = body();
    let route = Route::new(data.clone())
        .ignore_ranges()
        .fault(Fault::DropAfter(500_000))
        .times(1);
    let server = serve(route).await;
    let case = case();
    let sha = Sha256Digest::of_bytes(&data);
    let digest = download(
        &request(vec![server.url("/m")], &case.dest, Some(sha)),
        &NoProgress,
    )
    .await
    .unwrap();
    assert_eq!(digest, sha);
    assert_verified(&case.dest, &data);
    let seen = server.requests();
    assert_eq!(
        seen[1].range.as_deref(),
        Some("bytes=500000-"),
        "it asked to resume"
    );
}

#[tokio::test]
async fn wrong_bytes_are_deleted_and_both_digests_named() {
    let data = body();
    let server = serve(Route::new(data.clone()).fault(Fault::WrongBytes)).await;
    let case = case();
    let sha = Sha256Digest::of_bytes(&data);
    let error = download(
        &request(vec![server.url("/m")], &case.dest, Some(sha)),
        &NoProgress,
    )
    .await
    .unwrap_err();
    let wrong: Vec<u8> = data.iter().map(|b| b ^ 0x5a).collect();
    let actual = Sha256Digest::of_bytes(&wrong);
    let message = error.to_string();
    assert!(message.contains(&sha.to_string()), "{message}");
    assert!(message.contains(&actual.to_string()), "{message}");
    assert!(message.contains("nothing was placed"), "{message}");
    assert_nothing_placed(&case.dest);
}

#[tokio::test]
async fn an_html_login_page_is_refused() {
    for fault in [Fault::HtmlLogin, Fault::HtmlDisguised] {
        let server = serve(Route::new(body()).fault(fault.clone())).await;
        let case = case();
        let error = download(
            &request(vec![server.url("/m")], &case.dest, None),
            &NoProgress,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(error, DownloadError::WebPage { .. }),
            "{fault:?}: {error:?}"
        );
        assert!(
            error
                .to_string()
                .contains("the server sent a web page, not the file: a login is probably needed"),
            "{error}"
        );
        assert_nothing_placed(&case.dest);
        assert_eq!(server.requests().len(), 1, "a web page is not retried");
    }
}

#[tokio::test]
async fn unauthorized_names_the_token_variable() {
    let data = body();
    let server = serve(Route::new(data.clone()).fault(Fault::RequireBearer(TOKEN.into()))).await;

    // token-env set but the variable is not: say so.
    let case1 = case();
    let mut unset = request(vec![server.url("/m")], &case1.dest, None);
    unset.token_env = Some("CIVITAI_TOKEN".into());
    let error = download(&unset, &NoProgress).await.unwrap_err();
    assert!(
        error.to_string().contains("refused the download (401)"),
        "{error}"
    );
    assert!(
        error.to_string().contains("$CIVITAI_TOKEN is not set"),
        "{error}"
    );
    assert_nothing_placed(&case1.dest);

    // A wrong token was sent: it was rejected.
    let case2 = case();
    let mut wrong = request(vec![server.url("/m")], &case2.dest, None);
    wrong.token_env = Some("CIVITAI_TOKEN".into());
    wrong.token = Some(SecretToken::new("not-the-right-token"));
    let error = download(&wrong, &NoProgress).await.unwrap_err();
    assert!(
        error
            .to_string()
            .contains("$CIVITAI_TOKEN was sent and rejected"),
        "{error}"
    );
    assert_nothing_placed(&case2.dest);

    // No token-env at all.
    let case3 = case();
    let error = download(
        &request(vec![server.url("/m")], &case3.dest, None),
        &NoProgress,
    )
    .await
    .unwrap_err();
    assert!(error.to_string().contains("no token-env is set"), "{error}");
    assert_nothing_placed(&case3.dest);

    // The right token works, and was sent as a header.
    let case4 = case();
    let mut right = request(vec![server.url("/m")], &case4.dest, None);
    right.token = Some(SecretToken::new(TOKEN));
    right.token_env = Some("CIVITAI_TOKEN".into());
    download(&right, &NoProgress).await.unwrap();
    assert_verified(&case4.dest, &data);
    let seen = server.requests();
    assert_eq!(seen.len(), 4, "4xx is never retried");
    assert!(!seen[0].authorization_present && seen[3].authorization_present);
}

#[tokio::test]
async fn forbidden_is_an_authorization_error_too() {
    let server = serve(Route::new(body()).fault(Fault::Status(403))).await;
    let case = case();
    let error = download(
        &request(vec![server.url("/m")], &case.dest, None),
        &NoProgress,
    )
    .await
    .unwrap_err();
    assert!(
        error.to_string().contains("refused the download (403)"),
        "{error}"
    );
    assert_nothing_placed(&case.dest);
}

#[tokio::test]
async fn not_found_is_not_retried() {
    let server = serve(Route::new(body()).fault(Fault::Status(404))).await;
    let case = case();
    let error = download(
        &request(vec![server.url("/m")], &case.dest, None),
        &NoProgress,
    )
    .await
    .unwrap_err();
    assert!(error.to_string().contains("was not found (404)"), "{error}");
    assert_nothing_placed(&case.dest);
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn a_server_error_is_retried() {
    let data = body();
    let server = serve(Route::new(data.clone()).fault(Fault::Status(500)).times(2)).await;
    let case = case();
    download(
        &request(vec![server.url("/m")], &case.dest, None),
        &NoProgress,
    )
    .await
    .unwrap();
    assert_verified(&case.dest, &data);
    assert_eq!(server.requests().len(), 3);
}

#[tokio::test]
async fn persistent_server_errors_give_up_after_the_attempt_limit() {
    let server = serve(Route::new(body()).fault(Fault::Status(503))).await;
    let case = case();
    let error = download(
        &request(vec![server.url("/m")], &case.dest, None),
        &NoProgress,
    )
    .await
    .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("failed after 3 attempts; the last error: the server answered 503"),
        "{error}"
    );
    assert_nothing_placed(&case.dest);
    assert_eq!(server.requests().len(), 3);
}

#[tokio::test]
async fn a_slow_trickle_still_completes() {
    let data = httpfix::safetensors_file(64 * 1024, 3);
    let fault = Fault::Trickle {
        chunk: 8 * 1024,
        pause: Duration::from_millis(5),
    };
    let server = serve(Route::new(data.clone()).fault(fault)).await;
    let case = case();
    let sha = Sha256Digest::of_bytes(&data);
    download(
        &request(vec![server.url("/m")], &case.dest, Some(sha)),
        &NoProgress,
    )
    .await
    .unwrap();
    assert_verified(&case.dest, &data);
}

#[tokio::test]
async fn a_stalled_body_times_out_and_resumes() {
    let data = body();
    let fault = Fault::StallAfter {
        after: 300_000,
        pause: Duration::from_secs(30),
    };
    let server = serve(Route::new(data.clone()).fault(fault).times(1)).await;
    let case = case();
    let sha = Sha256Digest::of_bytes(&data);
    let mut req = request(vec![server.url("/m")], &case.dest, Some(sha));
    req.options.stall_timeout = Duration::from_millis(300);
    download(&req, &NoProgress).await.unwrap();
    assert_verified(&case.dest, &data);
    assert_eq!(server.requests()[1].range.as_deref(), Some("bytes=300000-"));
}

#[tokio::test]
async fn a_body_shorter_than_content_length_is_retried_then_reported() {
    let data = body();
    // Once: retried and resumed.
    let server = serve(
        Route::new(data.clone())
            .fault(Fault::ShortBody { extra: 10 })
            .times(1),
    )
    .await;
    let case1 = case();
    let sha = Sha256Digest::of_bytes(&data);
    download(
        &request(vec![server.url("/m")], &case1.dest, Some(sha)),
        &NoProgress,
    )
    .await
    .unwrap();
    assert_verified(&case1.dest, &data);

    // Always: reported, nothing placed.
    let server = serve(Route::new(data.clone()).fault(Fault::ShortBody { extra: 10 })).await;
    let case2 = case();
    let error = download(
        &request(vec![server.url("/m")], &case2.dest, Some(sha)),
        &NoProgress,
    )
    .await
    .unwrap_err();
    assert!(matches!(error, DownloadError::Network { .. }), "{error:?}");
    assert!(!case2.dest.exists());
}

#[tokio::test]
async fn redirects_are_followed_and_a_resume_starts_at_the_original_url() {
    let data = body();
    let server = HttpFixture::new()
        .route(
            "/resolve/model",
            Route::new(Vec::new()).fault(Fault::RedirectTo("/cdn/model".into())),
        )
        .route(
            "/cdn/model",
            Route::new(data.clone())
                .fault(Fault::DropAfter(600_000))
                .times(1),
        )
        .start()
        .await;
    let case = case();
    let sha = Sha256Digest::of_bytes(&data);
    download(
        &request(vec![server.url("/resolve/model")], &case.dest, Some(sha)),
        &NoProgress,
    )
    .await
    .unwrap();
    assert_verified(&case.dest, &data);
    let seen: Vec<(String, Option<String>)> = server
        .requests()
        .into_iter()
        .map(|r| (r.path, r.range))
        .collect();
    let resumed = Some("bytes=600000-".to_string());
    assert_eq!(
        seen,
        [
            ("/resolve/model".into(), None),
            ("/cdn/model".into(), None),
            ("/resolve/model".into(), resumed.clone()),
            ("/cdn/model".into(), resumed),
        ]
    );
}

#[tokio::test]
async fn mirrors_are_tried_in_order() {
    let data = body();
    let missing = serve(Route::new(data.clone()).fault(Fault::Status(404))).await;
    let good = serve(Route::new(data.clone())).await;
    let case = case();
    let sha = Sha256Digest::of_bytes(&data);
    let urls = vec![missing.url("/m"), good.url("/m")];
    download(&request(urls, &case.dest, Some(sha)), &NoProgress)
        .await
        .unwrap();
    assert_verified(&case.dest, &data);
    assert_eq!(missing.requests().len(), 1);
    assert_eq!(good.requests().len(), 1);
}

#[tokio::test]
async fn when_every_mirror_fails_each_failure_is_listed() {
    let missing = serve(Route::new(body()).fault(Fault::Status(404))).await;
    let login = serve(Route::new(body()).fault(Fault::HtmlLogin)).await;
    let case = case();
    let urls = vec![missing.url("/m"), login.url("/m")];
    let error = download(&request(urls, &case.dest, None), &NoProgress)
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(message.starts_with("every URL failed:"), "{message}");
    assert!(message.contains("was not found (404)"), "{message}");
    assert!(message.contains("the server sent a web page"), "{message}");
    assert_nothing_placed(&case.dest);
}

#[tokio::test]
async fn a_size_mismatch_is_reported_before_downloading() {
    let data = body();
    let server = serve(Route::new(data.clone())).await;
    let case = case();
    let mut req = request(vec![server.url("/m")], &case.dest, None);
    req.expected.size = Some(ExpectedSize::exact(1234));
    let error = download(&req, &NoProgress).await.unwrap_err();
    assert!(
        error.to_string().contains(&format!(
            "is {BODY_LEN} bytes, but the spec's size says 1234"
        )),
        "{error}"
    );
    assert_nothing_placed(&case.dest);
}

#[tokio::test]
async fn a_resumed_part_of_the_wrong_size_is_discarded() {
    let data = body();
    let server = serve(
        Route::new(data.clone())
            .fault(Fault::DropAfter(100_000))
            .times(1),
    )
    .await;
    let case = case();
    let mut first = request(vec![server.url("/m")], &case.dest, None);
    first.options.max_attempts = 1;
    download(&first, &NoProgress).await.unwrap_err();
    assert!(part_path(&case.dest).exists());

    let mut second = request(vec![server.url("/m")], &case.dest, None);
    second.expected.size = Some(ExpectedSize::exact(99));
    let error = download(&second, &NoProgress).await.unwrap_err();
    assert!(
        matches!(error, DownloadError::SizeMismatch { .. }),
        "{error:?}"
    );
    assert_nothing_placed(&case.dest);
}

#[tokio::test]
async fn a_full_disk_is_said_plainly() {
    let server = serve(Route::new(body())).await;
    let case = case();
    std::fs::create_dir_all(case.dest.parent().unwrap()).unwrap();
    // Writes through the part land on /dev/full, which fails them with ENOSPC.
    std::os::unix::fs::symlink("/dev/full", part_path(&case.dest)).unwrap();
    let error = download(
        &request(vec![server.url("/m")], &case.dest, None),
        &NoProgress,
    )
    .await
    .unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("the disk is full while writing"),
        "{error}"
    );
    assert!(!case.dest.exists());
}

#[tokio::test]
async fn bad_requests_are_refused_up_front() {
    let case = case();
    let error = download(&request(vec![], &case.dest, None), &NoProgress)
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("give the model at least one `url`"),
        "{error}"
    );

    let error = download(
        &request(vec!["ftp://h/m".into()], &case.dest, None),
        &NoProgress,
    )
    .await
    .unwrap_err();
    assert!(error.to_string().contains("not ftp"), "{error}");
    assert!(!case.dest.exists());
}

#[tokio::test]
async fn the_token_never_appears_in_any_error() {
    let failing = [
        Fault::Status(401),
        Fault::Status(403),
        Fault::Status(404),
        Fault::Status(500),
        Fault::HtmlLogin,
        Fault::WrongBytes,
        Fault::ShortBody { extra: 5 },
    ];
    for fault in failing {
        let data = body();
        let server = serve(Route::new(data.clone()).fault(fault)).await;
        let case = case();
        // The token also rides in the query, as CivitAI allows.
        let url = format!("{}?token={TOKEN}", server.url("/m"));
        let mut req = request(
            vec![url.clone(), url],
            &case.dest,
            Some(Sha256Digest::of_bytes(&data)),
        );
        req.token = Some(SecretToken::new(TOKEN));
        req.token_env = Some("CIVITAI_TOKEN".into());
        assert!(!format!("{req:?}").contains(TOKEN));
        let error = download(&req, &NoProgress).await.unwrap_err();
        assert_no_token(&error);
        if let DownloadError::AllMirrorsFailed { failures } = &error {
            assert!(failures.iter().all(|f| !f.url.contains(TOKEN)));
        }
        // The sidecar on disk does not hold it either.
        if let Ok(meta) = std::fs::read_to_string(meta_path(&case.dest)) {
            assert!(!meta.contains(TOKEN));
        }
    }
}

#[test]
fn copy_from_source_verifies_like_a_download() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("downloads/model.safetensors");
    std::fs::create_dir_all(source.parent().unwrap()).unwrap();
    let data = body();
    std::fs::write(&source, &data).unwrap();
    let sha = Sha256Digest::of_bytes(&data);

    let dest = dir.path().join("comfy/models/vae/model.safetensors");
    let expected = Expected {
        sha256: Some(sha),
        size: Some(ExpectedSize::exact(BODY_LEN as u64)),
    };
    assert_eq!(
        copy_from_source(&source, &dest, &expected, &NoProgress).unwrap(),
        sha
    );
    assert_verified(&dest, &data);

    let other = dir.path().join("comfy/models/vae/other.safetensors");
    let wrong = Expected {
        sha256: Some(Sha256Digest::of_bytes(b"something else")),
        size: None,
    };
    let error = copy_from_source(&source, &other, &wrong, &NoProgress).unwrap_err();
    assert!(
        matches!(error, DownloadError::HashMismatch { .. }),
        "{error:?}"
    );
    assert_nothing_placed(&other);

    let missing = dir.path().join("nope.safetensors");
    let error = copy_from_source(&missing, &other, &Expected::default(), &NoProgress).unwrap_err();
    assert!(
        error.to_string().starts_with("cannot read the source file"),
        "{error}"
    );
    assert_nothing_placed(&other);

    let page = dir.path().join("page.safetensors");
    std::fs::write(&page, "<!DOCTYPE html><html>log in</html>").unwrap();
    let error = copy_from_source(&page, &other, &Expected::default(), &NoProgress).unwrap_err();
    assert!(
        error.to_string().contains("is a web page, not the model"),
        "{error}"
    );
    assert_nothing_placed(&other);
}

#[derive(Default)]
struct RecordingProgress {
    starts: Mutex<Vec<Option<u64>>>,
    bytes: Mutex<u64>,
}

impl Progress for RecordingProgress {
    /// A bar restarts at each start, so count bytes from the last one.
    fn on_start(&self, total: Option<u64>) {
        self.starts.lock().unwrap().push(total);
        *self.bytes.lock().unwrap() = 0;
    }
    fn on_bytes(&self, n: u64) {
        *self.bytes.lock().unwrap() += n;
    }
}

// ---- hashing ----

#[test]
fn hash_file_matches_known_digests() {
    let dir = tempfile::tempdir().unwrap();
    let million_a = dir.path().join("a");
    // FIPS 180-2 test vector: one million 'a'.
    std::fs::write(&million_a, vec![b'a'; 1_000_000]).unwrap();
    let empty = dir.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    assert_eq!(
        hash_file(&million_a).unwrap().to_string(),
        "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"
    );
    assert_eq!(
        hash_file(&empty).unwrap().to_string(),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );

    let missing = dir.path().join("missing");
    let results = hash_files_parallel(&[million_a.clone(), missing.clone(), empty.clone()], 2);
    assert_eq!(results.len(), 3);
    assert_eq!(
        results[0].as_ref().unwrap(),
        &hash_file(&million_a).unwrap()
    );
    let error = results[1].as_ref().unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with(&format!("cannot read {}", missing.display()))
    );
    assert_eq!(results[2].as_ref().unwrap(), &hash_file(&empty).unwrap());
    assert!(hash_files_parallel(&[], 4).is_empty());
}

#[test]
fn sri_and_hex_name_the_same_digest() {
    let hex = "735e4c3a447a3255760d7f86845f09f937809baa529c17370d83e4c3758f3c75";
    let from_hex: Sha256Digest = hex.parse().unwrap();
    let from_sri: Sha256Digest = from_hex.to_sri().parse().unwrap();
    assert_eq!(from_hex, from_sri);
    assert_eq!(from_sri.to_string(), hex);
}

#[test]
fn file_key_of_a_downloaded_file_is_stable_until_touched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m");
    std::fs::write(&path, b"weights").unwrap();
    let key = FileKey::of(&path).unwrap();
    assert_eq!(key, FileKey::of(&path).unwrap());
    assert!(FileKey::of(&dir.path().join("missing")).is_err());
}

// ---- safetensors ----

/// Writes a safetensors file with these tensors (name, dtype, shape) and
/// zeroed data, plus optional metadata.
/// (name, dtype, shape)
type Tensor<'a> = (&'a str, &'a str, &'a [u64]);

fn write_safetensors(path: &Path, tensors: &[Tensor], metadata: Option<&str>) {
    let mut header = serde_json::Map::new();
    if let Some(metadata) = metadata {
        header.insert(
            "__metadata__".into(),
            serde_json::from_str(metadata).unwrap(),
        );
    }
    let mut offset = 0u64;
    for (name, dtype, shape) in tensors {
        let bytes = shape.iter().product::<u64>() * 2;
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let json = serde_json::to_vec(&header).unwrap();
    let mut file = (json.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(&json);
    file.resize(file.len() + offset as usize, 0);
    std::fs::write(path, file).unwrap();
}

#[test]
fn safetensors_header_reports_counts_metadata_and_architecture() {
    let dir = tempfile::tempdir().unwrap();
    let unet = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight";
    let families: &[(&str, &[Tensor], Architecture)] = &[
        (
            "sd15",
            &[
                (unet, "F16", &[320, 768]),
                (
                    "cond_stage_model.transformer.text_model.embeddings.position_ids",
                    "I64",
                    &[1, 77],
                ),
                ("first_stage_model.encoder.conv_in.weight", "F16", &[128, 3]),
            ],
            Architecture::Sd15,
        ),
        (
            "sd2",
            &[
                (unet, "F16", &[320, 1024]),
                (
                    "cond_stage_model.model.token_embedding.weight",
                    "F16",
                    &[49408, 1],
                ),
            ],
            Architecture::Sd2,
        ),
        (
            "unet-only-sd15",
            &[(unet, "F16", &[320, 768])],
            Architecture::Sd15,
        ),
        (
            "unet-only-sdxl",
            &[(unet, "F16", &[640, 2048])],
            Architecture::Sdxl,
        ),
        (
            "sdxl",
            &[
                (
                    "model.diffusion_model.input_blocks.0.0.weight",
                    "F16",
                    &[320, 4],
                ),
                (
                    "conditioner.embedders.1.model.ln_final.weight",
                    "F16",
                    &[1280],
                ),
            ],
            Architecture::Sdxl,
        ),
        (
            "flux",
            &[
                (
                    "double_blocks.0.img_attn.proj.weight",
                    "BF16",
                    &[3072, 3072],
                ),
                ("single_blocks.0.linear1.weight", "BF16", &[21504, 1]),
            ],
            Architecture::Flux,
        ),
        (
            "lora",
            &[
                (
                    "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight",
                    "F16",
                    &[320, 8],
                ),
                (
                    "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight",
                    "F16",
                    &[8, 320],
                ),
                (
                    "lora_unet_down_blocks_0_attentions_0_proj_in.alpha",
                    "F16",
                    &[],
                ),
            ],
            Architecture::Lora,
        ),
        (
            "peft-lora",
            &[(
                "transformer.single_blocks.0.attn.to_q.lora_A.weight",
                "BF16",
                &[16, 3072],
            )],
            Architecture::Lora,
        ),
        (
            "vae",
            &[
                ("encoder.conv_in.weight", "F32", &[128, 3]),
                ("decoder.conv_out.weight", "F32", &[3, 128]),
                ("quant_conv.weight", "F32", &[8, 8]),
                ("post_quant_conv.weight", "F32", &[4, 4]),
            ],
            Architecture::Vae,
        ),
        (
            "controlnet",
            &[
                ("control_model.input_hint_block.0.weight", "F16", &[16, 3]),
                ("control_model.input_blocks.0.0.weight", "F16", &[320, 4]),
            ],
            Architecture::ControlNet,
        ),
        (
            "unknown",
            &[("text_model.embeddings.weight", "F32", &[4, 4])],
            Architecture::Unknown,
        ),
    ];
    for (name, tensors, expected) in families {
        let path = dir.path().join(format!("{name}.safetensors"));
        write_safetensors(&path, tensors, None);
        let info = read_header(&path).unwrap();
        assert_eq!(info.architecture, *expected, "{name}");
        assert_eq!(info.tensor_count, tensors.len(), "{name}");
    }

    let path = dir.path().join("with-metadata.safetensors");
    write_safetensors(
        &path,
        &[
            ("encoder.a", "F16", &[2]),
            ("encoder.b", "F16", &[2]),
            ("decoder.c", "F32", &[2]),
        ],
        Some(r#"{"format": "pt", "ss_network_dim": "8"}"#),
    );
    let info = read_header(&path).unwrap();
    assert_eq!(info.tensor_count, 3);
    assert_eq!(info.dtypes.get("F16"), Some(&2));
    assert_eq!(info.dtypes.get("F32"), Some(&1));
    assert_eq!(info.main_dtype(), Some("F16"));
    assert_eq!(info.metadata.get("format").map(String::as_str), Some("pt"));
    assert_eq!(
        info.metadata.get("ss_network_dim").map(String::as_str),
        Some("8")
    );
}

#[test]
fn non_safetensors_files_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let check = |name: &str, bytes: &[u8], expected: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let error = read_header(&path).unwrap_err();
        assert!(error.to_string().contains(expected), "{name}: {error}");
        error
    };

    let error = check("short", b"1234", "only 4 bytes, too few for a header");
    assert!(matches!(error, SafetensorsError::TooShort { len: 4, .. }));

    // A pickle zip starts with "PK\x03\x04": as a length that is absurd.
    check(
        "pickle.ckpt",
        b"PK\x03\x04\x14\x00\x00\x00rest of a zip",
        "more than the 104857600 allowed",
    );

    let mut truncated = 100u64.to_le_bytes().to_vec();
    truncated.extend_from_slice(b"{\"a\":");
    check(
        "truncated",
        &truncated,
        "is truncated: its header needs 108 bytes but the file has 13",
    );

    let mut not_json = 9u64.to_le_bytes().to_vec();
    not_json.extend_from_slice(b"not json!");
    check("garbage", &not_json, "its header is not valid JSON");

    let mut array = 2u64.to_le_bytes().to_vec();
    array.extend_from_slice(b"[]");
    check("array", &array, "its header is not a JSON object");

    let mut no_dtype = 17u64.to_le_bytes().to_vec();
    no_dtype.extend_from_slice(br#"{"t":{"shape":1}}"#);
    check("no-dtype", &no_dtype, "tensor \"t\" has no dtype");

    let error = read_header(&dir.path().join("missing")).unwrap_err();
    assert!(error.to_string().starts_with("cannot read"), "{error}");
}

// ---- Issue 9: secrets reach only their host; a placed file is what its name says.

/// CivitAI's shape: `?token=` on the API host, a 302 to a signed URL on a
/// CDN host. The CDN (another host: 127.0.0.2) must see neither the token
/// (no `Referer`, no `Authorization`) nor anything but identity encoding.
#[tokio::test]
async fn the_cdn_on_another_host_sees_no_token_in_any_header() {
    let data = body();
    let cdn = HttpFixture::new()
        .route("/file", Route::new(data.clone()))
        .start_on("127.0.0.2")
        .await;
    let signed = format!("{}?X-Amz-Signature=cdnsig123&Expires=9", cdn.url("/file"));
    let api = HttpFixture::new()
        .route("/api", Route::new(vec![]).fault(Fault::RedirectTo(signed)))
        .start()
        .await;
    let case = case();
    let mut req = request(
        vec![format!("{}?type=Model&token={TOKEN}", api.url("/api"))],
        &case.dest,
        None,
    );
    req.token = Some(SecretToken::new(TOKEN));
    req.token_env = Some("CIVITAI_TOKEN".into());
    download(&req, &NoProgress).await.unwrap();
    assert_verified(&case.dest, &data);

    let at_api = api.requests();
    assert!(
        at_api[0].authorization_present,
        "the API host gets its token"
    );
    let at_cdn = cdn.requests();
    assert_eq!(at_cdn.len(), 1);
    for (name, value) in &at_cdn[0].headers {
        assert!(!value.contains(TOKEN), "{name}: {value} carries the token");
    }
    assert!(
        !at_cdn[0].headers.contains_key("referer"),
        "{:?}",
        at_cdn[0]
    );
    assert!(!at_cdn[0].authorization_present);
    for seen in at_api.iter().chain(&at_cdn) {
        assert_eq!(
            seen.headers.get("accept-encoding").map(String::as_str),
            Some("identity")
        );
    }
}

/// The model's `token-env` goes to the first URL's host only; a mirror on
/// another host gets its own token (`url "…" token-env=VAR`) or none.
#[tokio::test]
async fn a_mirror_on_another_host_gets_its_own_token_or_none() {
    let data = body();
    let main = HttpFixture::new().start().await; // every path 404
    let mirror = HttpFixture::new()
        .route(
            "/m",
            Route::new(data.clone()).fault(Fault::RequireBearer("mirror-secret-42".into())),
        )
        .start_on("127.0.0.2")
        .await;
    let urls = vec![main.url("/m"), mirror.url("/m")];

    // Without its own token the mirror gets none, and the message says why.
    let case1 = case();
    let mut req = request(urls.clone(), &case1.dest, None);
    req.token = Some(SecretToken::new(TOKEN));
    req.token_env = Some("MAIN_TOKEN".into());
    let error = download(&req, &NoProgress).await.unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("the token in $MAIN_TOKEN is only sent to 127.0.0.1")
            && message.contains("token-env=VAR"),
        "{message}"
    );
    assert!(mirror.requests().iter().all(|r| !r.authorization_present));
    assert_nothing_placed(&case1.dest);

    // With its own, it gets that one and never the main token.
    let case2 = case();
    req.dest = case2.dest.clone();
    req.url_credentials = vec![
        None,
        Some(Credential {
            env: "MIRROR_TOKEN".into(),
            token: Some(SecretToken::new("mirror-secret-42")),
        }),
    ];
    download(&req, &NoProgress).await.unwrap();
    assert_verified(&case2.dest, &data);
    for seen in mirror.requests() {
        assert!(
            seen.headers.values().all(|v| !v.contains(TOKEN)),
            "{seen:?}"
        );
    }
    assert!(main.requests().iter().all(|r| r.authorization_present));
}

#[tokio::test]
async fn a_redirect_to_another_scheme_is_refused_and_named() {
    for target in ["file:///etc/passwd", "ftp://127.0.0.1/m?token=ftp-secret-9"] {
        let server = serve(Route::new(vec![]).fault(Fault::RedirectTo(target.into()))).await;
        let case = case();
        let error = download(
            &request(vec![server.url("/m")], &case.dest, None),
            &NoProgress,
        )
        .await
        .unwrap_err();
        let message = error.to_string();
        assert!(
            matches!(error, DownloadError::UnsafeRedirect { .. }),
            "{target}: {error:?}"
        );
        let shown = target.replace("ftp-secret-9", "***");
        assert!(
            message.contains(&format!(
                "{} redirected to {shown}, which plasma does not follow",
                server.url("/m")
            )),
            "{message}"
        );
        assert!(!message.contains("ftp-secret-9"), "{message}");
        assert!(
            !message.contains("is not a usable download URL"),
            "{message}"
        );
        assert_eq!(server.requests().len(), 1, "not retried");
        assert_nothing_placed(&case.dest);
    }
}

#[tokio::test]
async fn gone_and_not_found_are_told_apart() {
    for (status, said) in [(404, "was not found (404)"), (410, "is gone (410)")] {
        let server = serve(Route::new(body()).fault(Fault::Status(status))).await;
        let case = case();
        let error = download(
            &request(vec![server.url("/m")], &case.dest, None),
            &NoProgress,
        )
        .await
        .unwrap_err();
        let message = error.to_string();
        assert!(message.contains(said), "{message}");
        assert!(!message.contains("resume"), "{message}");
        assert_eq!(error.kept_bytes(), 0);
        assert_nothing_placed(&case.dest);
    }
}

#[tokio::test]
async fn an_encoded_body_is_refused() {
    let server = serve(Route::new(body()).fault(Fault::Encoded("gzip"))).await;
    let case = case();
    let error = download(
        &request(vec![server.url("/m")], &case.dest, None),
        &NoProgress,
    )
    .await
    .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("sent the file encoded as `gzip` though plasma asked for it as is"),
        "{error}"
    );
    assert_eq!(
        server.requests()[0]
            .headers
            .get("accept-encoding")
            .map(String::as_str),
        Some("identity")
    );
    assert_nothing_placed(&case.dest);
}

/// Without a sha256, what arrives must still be what the name says; the
/// message shows what was received.
#[tokio::test]
async fn unpinned_bodies_that_are_not_what_their_name_says_are_refused() {
    let json_error = Fault::Body {
        content_type: "application/json",
        body: br#"{"error":"Unauthorized"}"#,
    };
    let cases: Vec<(&str, Fault, Vec<&str>)> = vec![
        (
            "m.safetensors",
            json_error.clone(),
            vec![
                "is not a safetensors file",
                "Content-Type application/json",
                r#"starting "{\"error\":\"Unauthorized\"}""#,
            ],
        ),
        (
            "m.ckpt",
            json_error,
            vec![
                "is not a PyTorch checkpoint",
                "neither a zip archive nor a pickle",
            ],
        ),
        (
            "m.bin",
            Fault::Body {
                content_type: "application/octet-stream",
                body: b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03",
            },
            vec!["Content-Type application/octet-stream", "(binary) 1f 8b 08"],
        ),
        (
            "pose.yaml",
            Fault::Body {
                content_type: "text/plain",
                body: b"model: [unclosed\n",
            },
            vec!["is not a YAML document", "does not parse as YAML"],
        ),
        (
            "config.json",
            Fault::Body {
                content_type: "text/plain",
                body: b"Rate limit exceeded",
            },
            vec![
                "is not a JSON document",
                r#"starting "Rate limit exceeded""#,
            ],
        ),
    ];
    for (name, fault, said) in cases {
        let server = serve(Route::new(body()).fault(fault)).await;
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("models").join(name);
        let error = download(&request(vec![server.url("/m")], &dest, None), &NoProgress)
            .await
            .unwrap_err();
        let message = error.to_string();
        for part in said {
            assert!(message.contains(part), "{name}: {part:?} not in {message}");
        }
        assert!(message.contains("nothing was placed"), "{message}");
        assert_nothing_placed(&dest);
    }
}

/// 16 bytes every 50 ms would take hours; the deadline ends it, keeps the
/// bytes for a resume, and says so.
#[tokio::test]
async fn a_trickle_ends_at_the_deadline() {
    let server = serve(Route::new(body()).fault(Fault::Trickle {
        chunk: 16,
        pause: Duration::from_millis(50),
    }))
    .await;
    let case = case();
    let mut req = request(vec![server.url("/m")], &case.dest, None);
    req.options.deadline = Duration::from_secs(2);
    let started = std::time::Instant::now();
    let error = download(&req, &NoProgress).await.unwrap_err();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(4), "took {took:?}");
    assert!(matches!(error, DownloadError::Deadline { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains("did not finish within 2s"), "{message}");
    assert!(
        message.contains("bytes are kept and the next run resumes"),
        "{message}"
    );
    assert!(!case.dest.exists());
    assert!(part_path(&case.dest).exists(), "the bytes so far are kept");
}

#[tokio::test]
async fn a_transfer_below_the_minimum_speed_is_given_up() {
    let server = serve(Route::new(body()).fault(Fault::Trickle {
        chunk: 10,
        pause: Duration::from_millis(100),
    }))
    .await;
    let case = case();
    let mut req = request(vec![server.url("/m")], &case.dest, None);
    req.options.min_speed = 10_000;
    req.options.low_speed_window = Duration::from_millis(500);
    req.options.max_attempts = 2;
    let error = download(&req, &NoProgress).await.unwrap_err();
    assert!(
        error
            .to_string()
            .contains("slower than 10000 bytes/s for 0.5s"),
        "{error}"
    );
    assert_eq!(server.requests().len(), 2, "retried once, resuming");
    assert!(!case.dest.exists());
}

#[tokio::test]
async fn a_models_folder_that_is_a_dangling_link_is_named() {
    let server = serve(Route::new(body())).await;
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("models");
    std::os::unix::fs::symlink("/nonexistent/external-disk/models", &link).unwrap();
    let dest = link.join("checkpoints/m.safetensors");
    let error = download(&request(vec![server.url("/m")], &dest, None), &NoProgress)
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "{} is a symbolic link to /nonexistent/external-disk/models, which does not exist \
             (an external disk that is not mounted?): plasma will not create a folder in its place",
            link.display()
        )
    );
    assert!(server.requests().is_empty(), "nothing was downloaded");
}

/// The fault matrix with no sha256 to fall back on: for every fault and
/// every kind of file name, either the file at the path is the served file
/// (and what its name says), or there is no file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpinned_fault_matrix_places_the_right_file_or_none() {
    let faults = || -> Vec<(&'static str, Option<Fault>, usize)> {
        vec![
            ("none", None, usize::MAX),
            ("drop", Some(Fault::DropAfter(70_000)), 1),
            ("drop-always", Some(Fault::DropAfter(70_000)), usize::MAX),
            ("wrong-bytes", Some(Fault::WrongBytes), usize::MAX),
            ("html", Some(Fault::HtmlLogin), usize::MAX),
            ("html-disguised", Some(Fault::HtmlDisguised), usize::MAX),
            ("401", Some(Fault::Status(401)), usize::MAX),
            ("403", Some(Fault::Status(403)), usize::MAX),
            ("404", Some(Fault::Status(404)), usize::MAX),
            ("410", Some(Fault::Status(410)), usize::MAX),
            ("500-once", Some(Fault::Status(500)), 1),
            ("503", Some(Fault::Status(503)), usize::MAX),
            (
                "to-file",
                Some(Fault::RedirectTo("file:///etc/passwd".into())),
                usize::MAX,
            ),
            (
                "to-ftp",
                Some(Fault::RedirectTo("ftp://127.0.0.1/x".into())),
                usize::MAX,
            ),
            ("short", Some(Fault::ShortBody { extra: 100 }), usize::MAX),
            ("short-once", Some(Fault::ShortBody { extra: 100 }), 1),
            (
                "stall",
                Some(Fault::StallAfter {
                    after: 50_000,
                    pause: Duration::from_millis(400),
                }),
                1,
            ),
            (
                "json",
                Some(Fault::Body {
                    content_type: "application/json",
                    body: br#"{"error":"Unauthorized"}"#,
                }),
                usize::MAX,
            ),
            ("gzip", Some(Fault::Encoded("gzip")), usize::MAX),
            ("bearer", Some(Fault::RequireBearer("x".into())), usize::MAX),
        ]
    };
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("m.safetensors", httpfix::safetensors_file(200_000, 1)),
        ("m.ckpt", httpfix::pickle_file(200_000, 2)),
        (
            "m.yaml",
            b"model:\n  target: cldm.cldm.ControlLDM\n".to_vec(),
        ),
    ];
    let mut outcomes = Vec::new();
    for (name, data) in &files {
        for (fault_name, fault, times) in faults() {
            for ignore_ranges in [false, true] {
                let mut route = Route::new(data.clone());
                if let Some(fault) = fault.clone() {
                    route = route.fault(fault).times(times);
                }
                if ignore_ranges {
                    route = route.ignore_ranges();
                }
                let server = serve(route).await;
                let dir = tempfile::tempdir().unwrap();
                let dest = dir.path().join("models").join(name);
                let mut req = request(vec![server.url("/m")], &dest, None);
                req.options.stall_timeout = Duration::from_millis(200);
                let result = download(&req, &NoProgress).await;
                let case = format!("{name} {fault_name} ignore_ranges={ignore_ranges}");
                match &result {
                    Ok(digest) => {
                        // What its name says, always; the served file too.
                        assert_eq!(FileKind::of(&dest).check(&dest), Ok(()), "{case}");
                        // Other bytes that happen to be a valid document
                        // (XORed text, a JSON error, which YAML accepts) are
                        // what only a sha256 can refuse.
                        let lucky =
                            *name == "m.yaml" && ["wrong-bytes", "json"].contains(&fault_name);
                        if !lucky {
                            assert_verified(&dest, data);
                            assert_eq!(*digest, Sha256Digest::of_bytes(data), "{case}");
                        }
                    }
                    Err(error) => {
                        assert!(!dest.exists(), "{case}: a file was placed despite {error}");
                    }
                }
                outcomes.push((case, result.is_ok()));
            }
        }
    }
    assert_eq!(outcomes.len(), 120);
    // The faults that a retry or resume cures do end with the file.
    for cured in ["none", "drop ", "500-once", "short-once", "stall"] {
        assert!(
            outcomes
                .iter()
                .filter(|(case, _)| case.contains(cured))
                .all(|(_, ok)| *ok),
            "{cured}: {outcomes:?}"
        );
    }
}
