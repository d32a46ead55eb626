//! Images and disks: the host's image cache and the VM disks made from it with `qemu-img`.
//!
//! An image named by an `http(s)` URL is fetched once per host into
//! `<data-dir>/images/<digest of the URL>.img` (written to a temporary file, hashed while it
//! streams, checked against the spec's checksum, synced and renamed, so that a half-fetched
//! image is never used). An image named by a path is used in place. Each disk of a VM is a
//! qcow2 file in the VM's directory: an overlay whose backing file is the image, or a blank
//! disk of its size.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use ring::digest::{Context as Digest, SHA256};
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

/// How many redirects a fetch follows.
const MAX_REDIRECTS: usize = 5;
/// How long a fetch may wait for the server's first answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Why an image or disk could not be prepared. Each variant is also a condition reason.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The image path does not exist or cannot be read.
    #[error("image {image}: {source}")]
    Missing {
        /// The image.
        image: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The image is neither an absolute path nor an http(s) URL.
    #[error("image {0:?}: not an absolute path nor an http(s) URL")]
    BadReference(String),
    /// The image could not be downloaded.
    #[error("image {url}: {message}")]
    Fetch {
        /// The URL.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// The image's digest is not the one the spec gives.
    #[error("image {image}: sha256 is {actual}, the spec says {expected}")]
    Checksum {
        /// The image.
        image: String,
        /// The spec's digest.
        expected: String,
        /// The image's digest.
        actual: String,
    },
    /// `qemu-img` failed.
    #[error("qemu-img {args}: {message}")]
    QemuImg {
        /// Its arguments.
        args: String,
        /// What it said.
        message: String,
    },
    /// A file of the cache or of the VM could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

type Result<T, E = ImageError> = std::result::Result<T, E>;

// === impl ImageError ===

impl ImageError {
    /// The reason a VM condition gives for this error.
    pub fn reason(&self) -> &'static str {
        match self {
            ImageError::Missing { .. } => "ImageNotFound",
            ImageError::BadReference(_) => "ImageInvalid",
            ImageError::Fetch { .. } => "ImageFetchFailed",
            ImageError::Checksum { .. } => "ImageChecksumMismatch",
            ImageError::QemuImg { .. } => "DiskCreateFailed",
            ImageError::Io { .. } => "DiskCreateFailed",
        }
    }
}

/// An image ready to back disks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The file.
    pub path: PathBuf,
    /// Its format as `qemu-img` sees it (`qcow2`, `raw`).
    pub format: String,
    /// Its virtual size in bytes.
    pub virtual_size: u64,
}

/// The host's image cache.
#[derive(Debug)]
pub struct Images {
    dir: PathBuf,
    /// One lock per image, so that two VMs never fetch the same image at once.
    locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

// === impl Images ===

impl Images {
    /// The cache under `dir`.
    pub fn new(dir: PathBuf) -> Images {
        Images {
            dir,
            locks: Mutex::new(HashMap::new()),
        }
    }

    /// The image `reference` (a URL or an absolute path), fetched and verified against
    /// `checksum` (`sha256:<hex>`) if needed.
    pub async fn get(&self, reference: &str, checksum: Option<&str>) -> Result<Image> {
        let lock = {
            let mut locks = self.locks.lock().await;
            locks.entry(reference.to_string()).or_default().clone()
        };
        let _held = lock.lock().await;
        let path = if reference.starts_with("http://") || reference.starts_with("https://") {
            self.fetch(reference, checksum).await?
        } else if reference.starts_with('/') {
            let path = PathBuf::from(reference);
            std::fs::metadata(&path).map_err(|source| ImageError::Missing {
                image: reference.to_string(),
                source,
            })?;
            if let Some(expected) = checksum {
                let actual = sha256_file(&path).await?;
                check(reference, expected, &actual)?;
            }
            path
        } else {
            return Err(ImageError::BadReference(reference.to_string()));
        };
        let info = qemu_img_info(&path).await?;
        Ok(Image {
            path,
            format: info.0,
            virtual_size: info.1,
        })
    }

    /// The cached copy of `url`, fetched first if it is not there.
    async fn fetch(&self, url: &str, checksum: Option<&str>) -> Result<PathBuf> {
        let name = hex(&ring::digest::digest(&SHA256, url.as_bytes()).as_ref()[..16]);
        let path = self.dir.join(format!("{name}.img"));
        let sum_file = self.dir.join(format!("{name}.sha256"));
        if path.exists() {
            let actual = match std::fs::read_to_string(&sum_file) {
                Ok(s) => s.trim().to_string(),
                Err(_) => sha256_file(&path).await?,
            };
            return match checksum {
                Some(expected) => check(url, expected, &actual).map(|()| path),
                None => Ok(path),
            };
        }
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ImageError::Io { path, source }
        };
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(io(&self.dir))?;
        let part = self.dir.join(format!("{name}.part"));
        let actual = download(url, &part).await;
        let actual = match actual {
            Ok(a) => a,
            Err(e) => {
                let _ = tokio::fs::remove_file(&part).await;
                return Err(e);
            }
        };
        if let Some(expected) = checksum
            && let Err(e) = check(url, expected, &actual)
        {
            let _ = tokio::fs::remove_file(&part).await;
            return Err(e);
        }
        tokio::fs::write(&sum_file, &actual)
            .await
            .map_err(io(&sum_file))?;
        tokio::fs::rename(&part, &path).await.map_err(io(&path))?;
        tracing::info!(url, path = %path.display(), sha256 = %actual, "cached the image");
        Ok(path)
    }
}

/// Makes the disk file `path`: an overlay of `image` grown to `size` if given, or a blank
/// qcow2 disk of `size`.
pub async fn create_disk(path: &Path, image: Option<&Image>, size: Option<u64>) -> Result<()> {
    let path_arg = path.display().to_string();
    let mut args: Vec<String> = vec!["create".into(), "-q".into(), "-f".into(), "qcow2".into()];
    match image {
        Some(image) => {
            if let Some(size) = size
                && size < image.virtual_size
            {
                return Err(ImageError::QemuImg {
                    args: format!("create {path_arg}"),
                    message: format!(
                        "the disk's size ({size} bytes) is smaller than its image ({} bytes)",
                        image.virtual_size
                    ),
                });
            }
            args.extend([
                "-F".into(),
                image.format.clone(),
                "-b".into(),
                image.path.display().to_string(),
                path_arg,
            ]);
            if let Some(size) = size {
                args.push(size.to_string());
            }
        }
        None => {
            let size = size.ok_or_else(|| ImageError::QemuImg {
                args: format!("create {path_arg}"),
                message: "a blank disk needs a size".into(),
            })?;
            args.extend([path_arg, size.to_string()]);
        }
    }
    qemu_img(&args).await.map(drop)
}

/// Grows the disk file at `path` to `size` bytes when it is smaller (never shrinks).
pub async fn grow_disk(path: &Path, size: u64) -> Result<bool> {
    let (_, current) = qemu_img_info(path).await?;
    if current >= size {
        return Ok(false);
    }
    qemu_img(&[
        "resize".into(),
        "-q".into(),
        path.display().to_string(),
        size.to_string(),
    ])
    .await?;
    Ok(true)
}

/// What `qemu-img info` says of an image file (read while QEMU may hold it).
pub(crate) async fn qemu_img_json(path: &Path) -> Result<serde_json::Value> {
    let out = qemu_img(&[
        "info".into(),
        "-U".into(),
        "--output=json".into(),
        path.display().to_string(),
    ])
    .await?;
    serde_json::from_slice(&out).map_err(|e| ImageError::QemuImg {
        args: format!("info {}", path.display()),
        message: format!("unreadable answer: {e}"),
    })
}

/// The format and virtual size of an image file.
async fn qemu_img_info(path: &Path) -> Result<(String, u64)> {
    let info = qemu_img_json(path).await?;
    Ok((
        info["format"].as_str().unwrap_or("raw").to_string(),
        info["virtual-size"].as_u64().unwrap_or(0),
    ))
}

pub(crate) async fn qemu_img(args: &[String]) -> Result<Vec<u8>> {
    let out = tokio::process::Command::new("qemu-img")
        .args(args)
        .output()
        .await
        .map_err(|e| ImageError::QemuImg {
            args: args.join(" "),
            message: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(ImageError::QemuImg {
            args: args.join(" "),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out.stdout)
}

/// Downloads `url` into `to`, following redirects; returns the content's sha256 (hex).
async fn download(url: &str, to: &Path) -> Result<String> {
    let fail = |message: String| ImageError::Fetch {
        url: url.to_string(),
        message,
    };
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .map_err(|e| fail(format!("no trusted roots: {e}")))?
        .https_or_http()
        .enable_http1()
        .build();
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(https);
    let mut current = url.to_string();
    let mut response = None;
    for _ in 0..=MAX_REDIRECTS {
        let uri: hyper::Uri = current
            .parse()
            .map_err(|e| fail(format!("not a valid URL: {e}")))?;
        let r = tokio::time::timeout(CONNECT_TIMEOUT, client.get(uri.clone()))
            .await
            .map_err(|_| fail(format!("no answer within {CONNECT_TIMEOUT:?}")))?
            .map_err(|e| fail(error_chain(&e)))?;
        if r.status().is_redirection() {
            let location = r
                .headers()
                .get(hyper::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .ok_or_else(|| fail(format!("{} without a Location", r.status())))?;
            current = if location.starts_with('/') {
                format!(
                    "{}://{}{location}",
                    uri.scheme_str().unwrap_or("http"),
                    uri.authority().map(|a| a.as_str()).unwrap_or_default()
                )
            } else {
                location.to_string()
            };
            continue;
        }
        response = Some(r);
        break;
    }
    let response = response.ok_or_else(|| fail(format!("more than {MAX_REDIRECTS} redirects")))?;
    if !response.status().is_success() {
        return Err(fail(format!("the server answered {}", response.status())));
    }
    let io = |source| ImageError::Io {
        path: to.to_path_buf(),
        source,
    };
    let mut file = tokio::fs::File::create(to).await.map_err(io)?;
    let mut digest = Digest::new(&SHA256);
    let mut body = response.into_body();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| fail(format!("the download broke: {e}")))?;
        if let Some(data) = frame.data_ref() {
            digest.update(data);
            file.write_all(data).await.map_err(io)?;
        }
    }
    file.sync_all().await.map_err(io)?;
    Ok(hex(digest.finish().as_ref()))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

async fn sha256_file(path: &Path) -> Result<String> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut file = std::fs::File::open(&path).map_err(|source| ImageError::Io {
            path: path.clone(),
            source,
        })?;
        let mut digest = Digest::new(&SHA256);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf).map_err(|source| ImageError::Io {
                path: path.clone(),
                source,
            })?;
            if n == 0 {
                return Ok(hex(digest.finish().as_ref()));
            }
            digest.update(&buf[..n]);
        }
    })
    .await
    .map_err(|e| ImageError::Io {
        path: PathBuf::new(),
        source: std::io::Error::other(e),
    })?
}

fn check(image: &str, expected: &str, actual: &str) -> Result<()> {
    let want = expected.strip_prefix("sha256:").unwrap_or(expected);
    if want.eq_ignore_ascii_case(actual) {
        Ok(())
    } else {
        Err(ImageError::Checksum {
            image: image.to_string(),
            expected: expected.to_string(),
            actual: format!("sha256:{actual}"),
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn path_images_are_verified_and_back_overlays_and_blank_disks_get_their_size() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.raw");
        std::fs::write(&base, vec![7u8; 1 << 20]).unwrap();
        let images = Images::new(dir.path().join("cache"));
        let digest = hex(ring::digest::digest(&SHA256, &vec![7u8; 1 << 20]).as_ref());
        let image = images
            .get(base.to_str().unwrap(), Some(&format!("sha256:{digest}")))
            .await
            .unwrap();
        assert_eq!(
            (image.format.as_str(), image.virtual_size),
            ("raw", 1 << 20)
        );
        let wrong = images
            .get(
                base.to_str().unwrap(),
                Some(&format!("sha256:{}", "0".repeat(64))),
            )
            .await
            .unwrap_err();
        assert_eq!(wrong.reason(), "ImageChecksumMismatch", "{wrong}");
        let missing = images.get("/nonexistent/x.qcow2", None).await.unwrap_err();
        assert_eq!(missing.reason(), "ImageNotFound", "{missing}");
        assert_eq!(
            images.get("relative.img", None).await.unwrap_err().reason(),
            "ImageInvalid"
        );

        let overlay = dir.path().join("root.qcow2");
        create_disk(&overlay, Some(&image), Some(4 << 20))
            .await
            .unwrap();
        assert_eq!(
            qemu_img_info(&overlay).await.unwrap(),
            ("qcow2".into(), 4 << 20)
        );
        let small = create_disk(&dir.path().join("x.qcow2"), Some(&image), Some(1024))
            .await
            .unwrap_err();
        assert!(
            small.to_string().contains("smaller than its image"),
            "{small}"
        );
        let blank = dir.path().join("data.qcow2");
        create_disk(&blank, None, Some(8 << 20)).await.unwrap();
        assert!(grow_disk(&blank, 16 << 20).await.unwrap());
        assert!(!grow_disk(&blank, 1 << 20).await.unwrap(), "never shrinks");
        assert_eq!(qemu_img_info(&blank).await.unwrap().1, 16 << 20);
    }

    #[tokio::test]
    async fn url_images_are_fetched_once_verified_and_follow_redirects() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let content: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let digest = hex(ring::digest::digest(&SHA256, &content).as_ref());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let served = Arc::new(AtomicUsize::new(0));
        let counter = served.clone();
        let body = content.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 2048];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]).to_string();
                if request.starts_with("GET /old.img ") {
                    let _ = s
                        .write_all(b"HTTP/1.1 302 Found\r\nLocation: /disk.img\r\nContent-Length: 0\r\n\r\n")
                        .await;
                } else if request.starts_with("GET /disk.img ") {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                    let _ = s.write_all(head.as_bytes()).await;
                    let _ = s.write_all(&body).await;
                } else {
                    let _ = s
                        .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                        .await;
                }
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let images = Images::new(dir.path().join("cache"));
        let url = format!("http://127.0.0.1:{port}/old.img");
        let sum = format!("sha256:{digest}");
        let image = images.get(&url, Some(&sum)).await.unwrap();
        assert_eq!(std::fs::read(&image.path).unwrap(), content);
        assert_eq!(image.format, "raw");
        let again = images.get(&url, Some(&sum)).await.unwrap();
        assert_eq!(again.path, image.path);
        assert_eq!(served.load(Ordering::SeqCst), 1, "fetched once per host");
        let wrong = images
            .get(
                &format!("http://127.0.0.1:{port}/disk.img"),
                Some(&format!("sha256:{}", "0".repeat(64))),
            )
            .await
            .unwrap_err();
        assert_eq!(wrong.reason(), "ImageChecksumMismatch", "{wrong}");
        let missing = images
            .get(&format!("http://127.0.0.1:{port}/nope.img"), None)
            .await
            .unwrap_err();
        assert!(missing.to_string().contains("404"), "{missing}");
    }

    #[tokio::test]
    async fn unreachable_urls_fail_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let images = Images::new(dir.path().join("cache"));
        // A port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = images
            .get(&format!("http://127.0.0.1:{port}/img.qcow2"), None)
            .await
            .unwrap_err();
        assert_eq!(err.reason(), "ImageFetchFailed", "{err}");
        assert!(
            !dir.path().join("cache").read_dir().unwrap().any(|e| e
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "part"))
        );
    }
}
