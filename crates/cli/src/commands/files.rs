//! `files …`, and saving a stored file checked against its sha256.

use std::path::{Path, PathBuf};

use sakuga_proto::v1 as pb;
use tokio_stream::StreamExt as _;

use super::shared::{list_project_id, page_note};
use crate::{CliError, args::FilesCmd, output, session::Session};

/// Runs a `files` command.
pub(super) async fn run(s: &Session, cmd: &FilesCmd, json: bool) -> Result<(), CliError> {
    match cmd {
        FilesCmd::List { job, kind, list } => {
            let kind = match kind.as_deref() {
                None => 0,
                Some("image") => pb::JobKind::Image.into(),
                Some("video") => pb::JobKind::Video.into(),
                Some(other) => {
                    return Err(CliError::usage(format!("--kind: {other:?} is not image or video")));
                }
            };
            let resp = s
                .files()
                .await?
                .list_files(pb::ListFilesRequest {
                    page_size: list.limit,
                    page_token: list.page_token.clone(),
                    project_id: list_project_id(s, list).await?,
                    job_id: job.clone().unwrap_or_default(),
                    kind,
                    prompt_contains: list.prompt.clone().unwrap_or_default(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            let rows: Vec<output::File> = output::all(&resp.files);
            output::print(json, &rows, &["id", "job_id", "kind", "width", "height", "size_bytes", "created"]);
            page_note(json, &resp.next_page_token);
        }
        FilesCmd::Get { id } => {
            let f = s.files().await?.get_file(pb::GetFileRequest { file_id: id.clone() }).await?.into_inner();
            output::print(json, &output::File::from(&f.file.unwrap_or_default()), &[]);
        }
        FilesCmd::Download { id, out } => {
            let path = download(s, id, out).await?;
            println!("{}", path.display());
        }
        FilesCmd::Thumbnail { id, out } => {
            let mut stream = s
                .files()
                .await?
                .get_thumbnail(pb::GetThumbnailRequest { file_id: id.clone() })
                .await?
                .into_inner();
            let mut bytes = Vec::new();
            while let Some(chunk) = stream.next().await {
                bytes.extend(chunk?.chunk);
            }
            let path = target(out, &format!("{id}-thumb.png"));
            std::fs::write(&path, &bytes).map_err(|e| CliError::other(format!("{}: {e}", path.display())))?;
            println!("{}", path.display());
        }
        FilesCmd::Delete { id } => {
            s.files().await?.delete_file(pb::DeleteFileRequest { file_id: id.clone() }).await?;
            if !json {
                println!("deleted {id}");
            }
        }
    }
    Ok(())
}

/// Where to write a download: `out` itself, or `out/<name>` when it is a folder.
fn target(out: &Path, name: &str) -> PathBuf {
    if out.is_dir() || out.as_os_str().to_string_lossy().ends_with('/') {
        out.join(name)
    } else {
        out.to_path_buf()
    }
}

/// Creates the folder `dir` (and its parents) unless it exists.
pub(super) fn create_folder(dir: &Path) -> Result<(), CliError> {
    std::fs::create_dir_all(dir).map_err(|e| CliError::other(format!("{}: {e}", dir.display())))
}

/// Saves file `id` at `out` (a file, or a folder: see [`target`]), checked against its
/// sha256; returns where.
pub(super) async fn download(s: &Session, id: &str, out: &Path) -> Result<PathBuf, CliError> {
    use sha2::Digest as _;
    let mut files = s.files().await?;
    let meta = files
        .get_file(pb::GetFileRequest { file_id: id.to_owned() })
        .await?
        .into_inner()
        .file
        .unwrap_or_default();
    let name = Path::new(&meta.name)
        .file_name()
        .map_or_else(|| format!("{id}.png"), |n| n.to_string_lossy().into_owned());
    let mut stream = files
        .read_file(pb::ReadFileRequest { file_id: id.to_owned(), offset: 0, length: 0 })
        .await?
        .into_inner();
    let mut bytes = Vec::with_capacity(usize::try_from(meta.size_bytes).unwrap_or(0));
    while let Some(chunk) = stream.next().await {
        bytes.extend(chunk?.chunk);
    }
    let digest = hex::encode(sha2::Sha256::digest(&bytes));
    if !digest.eq_ignore_ascii_case(&meta.sha256) {
        return Err(CliError::other(format!("file {id}: the download does not match its sha256; try again")));
    }
    if out.as_os_str().to_string_lossy().ends_with('/') {
        create_folder(out)?;
    }
    let path = target(out, &name);
    std::fs::write(&path, &bytes).map_err(|e| CliError::other(format!("{}: {e}", path.display())))?;
    Ok(path)
}
