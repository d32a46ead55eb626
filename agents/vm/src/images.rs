//! Images and disks: the host's image cache and the VM disks made from it with `qemu-img`.
//!
//! A VM names an image by URL or by [ClusterImage](keel_schemas::kinds::compute::ClusterImage)
//! (the admins' catalogue); [`Source`] is what either resolves to. An image at a URL is
//! fetched once per host into `<data-dir>/images/<digest of the URL>.img`: written to a
//! temporary file, hashed while it streams, checked against its checksum, synced and renamed,
//! so that a half-fetched image is never used. A fetch is bounded ([`FetchPolicy`]): http(s)
//! only, a size cap, timeouts, and — for a URL a tenant wrote — only public addresses, also
//! after redirects and DNS (the checked addresses are the ones connected to).
//!
//! Every image is untrusted input: [`inspect`] reads its header itself (a qcow2 with a
//! backing file or an external data file, or any format but raw and qcow2, is refused before
//! `qemu-img` opens it, the CVE-2024-32498 class), then asks `qemu-img info` under CPU and
//! memory limits with the format fixed. Each disk of a VM is a qcow2 file in the VM's
//! directory: an overlay whose backing file is the image, with its format explicit, or a
//! blank disk of its size.

use std::collections::HashMap;
use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use keel_schemas::Cidr;
use keel_schemas::net::AddressClass;
use ring::digest::{Context as Digest, SHA256};
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

/// How many redirects a fetch follows.
const MAX_REDIRECTS: usize = 5;
/// How long a fetch may wait for the server's first answer (name lookup included).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a download may stall between two pieces.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// `qemu-img info` limits (OpenStack's): address space and CPU seconds.
const INSPECT_MEMORY: u64 = 1 << 30;
/// How much of an image's start [`sniff`] reads.
const HEADER_BYTES: usize = 64 << 10;
/// How long an image refused for what it is (its source, size, digest or content) is not
/// fetched again: a VM retrying does not make the host download it over and over.
const REFUSAL_HOLD: Duration = Duration::from_secs(600);
const INSPECT_CPU_SECONDS: u64 = 30;
/// The formats a guest's disk may start from.
const FORMATS: [&str; 2] = ["raw", "qcow2"];

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
    /// The image catalogue has no ClusterImage of this name.
    #[error(
        "image {0:?}: no ClusterImage of this name (kubectl get clusterimages lists the catalogue)"
    )]
    NotCatalogued(String),
    /// The reference names nothing usable: not a ClusterImage name nor a URL.
    #[error("image {image:?}: {why}")]
    BadReference {
        /// The reference.
        image: String,
        /// Why.
        why: String,
    },
    /// The image could not be downloaded.
    #[error("image {url}: {message}")]
    Fetch {
        /// The URL.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// The URL (or a redirect) leads somewhere a tenant's image may not come from.
    #[error("image {url}: {why}")]
    Forbidden {
        /// The URL.
        url: String,
        /// Which rule it breaks.
        why: String,
    },
    /// The image is bigger than the host accepts.
    #[error("image {url}: larger than the limit of {limit} bytes")]
    TooLarge {
        /// The URL.
        url: String,
        /// The limit.
        limit: u64,
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
    /// The image is not one a guest may use: another format, a backing file, a data file.
    #[error("image {image}: refused: {why}")]
    Refused {
        /// The image.
        image: String,
        /// Why.
        why: String,
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
    /// A copy of this error if it is a refusal of the image itself (its source, size,
    /// digest or content), which fetching again would only repeat; none for a failure that
    /// may pass (the network, the disk).
    fn refusal(&self) -> Option<ImageError> {
        match self {
            ImageError::Forbidden { url, why } => Some(ImageError::Forbidden {
                url: url.clone(),
                why: why.clone(),
            }),
            ImageError::TooLarge { url, limit } => Some(ImageError::TooLarge {
                url: url.clone(),
                limit: *limit,
            }),
            ImageError::Checksum {
                image,
                expected,
                actual,
            } => Some(ImageError::Checksum {
                image: image.clone(),
                expected: expected.clone(),
                actual: actual.clone(),
            }),
            ImageError::Refused { image, why } => Some(ImageError::Refused {
                image: image.clone(),
                why: why.clone(),
            }),
            _ => None,
        }
    }

    /// The reason a VM condition gives for this error.
    pub fn reason(&self) -> &'static str {
        match self {
            ImageError::Missing { .. } | ImageError::NotCatalogued(_) => "ImageNotFound",
            ImageError::BadReference { .. } => "ImageInvalid",
            ImageError::Fetch { .. } => "ImageFetchFailed",
            ImageError::Forbidden { .. } => "ImageSourceForbidden",
            ImageError::TooLarge { .. } => "ImageTooLarge",
            ImageError::Checksum { .. } => "ImageChecksumMismatch",
            ImageError::Refused { .. } => "ImageRefused",
            ImageError::QemuImg { .. } => "DiskCreateFailed",
            ImageError::Io { .. } => "DiskCreateFailed",
        }
    }
}

/// Where an image comes from, once its reference is resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A URL to download.
    Url {
        /// The URL.
        url: String,
        /// `sha256:<hex>` it must have.
        checksum: Option<String>,
        /// Whether an admin wrote it (a ClusterImage): it may lead to private addresses.
        trusted: bool,
    },
    /// A file on the host: only ever from a ClusterImage.
    Path {
        /// The file.
        path: PathBuf,
        /// `sha256:<hex>` it must have.
        checksum: Option<String>,
    },
}

/// What a host's downloads may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchPolicy {
    /// The largest image accepted, in bytes.
    pub max_bytes: u64,
    /// How long one download may take in all.
    pub timeout: Duration,
    /// Networks a tenant's URL may reach besides public addresses (an admin's mirror).
    pub allowed_networks: Vec<Cidr>,
}

impl Default for FetchPolicy {
    fn default() -> FetchPolicy {
        FetchPolicy {
            max_bytes: 64 << 30,
            timeout: Duration::from_secs(3600),
            allowed_networks: Vec::new(),
        }
    }
}

/// An image ready to back disks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The file.
    pub path: PathBuf,
    /// Its format as inspected (`qcow2`, `raw`).
    pub format: String,
    /// Its virtual size in bytes.
    pub virtual_size: u64,
}

/// The host's image cache.
#[derive(Debug)]
pub struct Images {
    dir: PathBuf,
    policy: FetchPolicy,
    /// One lock per image, so that two VMs never fetch the same image at once.
    locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Downloads refused lately, by URL, checksum and format: not fetched again before
    /// [`REFUSAL_HOLD`] has passed.
    refused: std::sync::Mutex<HashMap<String, (Instant, ImageError)>>,
}

// === impl Source ===

impl Source {
    /// How messages name it.
    pub fn describe(&self) -> String {
        match self {
            Source::Url { url, .. } => url.clone(),
            Source::Path { path, .. } => path.display().to_string(),
        }
    }
}

// === impl Images ===

impl Images {
    /// The cache under `dir`, fetching under `policy`.
    pub fn new(dir: PathBuf, policy: FetchPolicy) -> Images {
        Images {
            dir,
            policy,
            locks: Mutex::new(HashMap::new()),
            refused: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The image at `source`, fetched, verified and inspected; `format` is the one it must
    /// have, if its ClusterImage says.
    pub async fn get(&self, source: &Source, format: Option<&str>) -> Result<Image> {
        let name = source.describe();
        let lock = {
            let mut locks = self.locks.lock().await;
            locks.entry(name.clone()).or_default().clone()
        };
        let _held = lock.lock().await;
        let path = match source {
            Source::Url {
                url,
                checksum,
                trusted,
            } => {
                let key = format!(
                    "{url} {} {trusted} {}",
                    checksum.as_deref().unwrap_or_default(),
                    format.unwrap_or_default()
                );
                if let Some(e) = self.refused_lately(&key) {
                    return Err(e);
                }
                match self.fetch(url, checksum.as_deref(), *trusted, format).await {
                    Ok(path) => path,
                    Err(e) => {
                        if let Some(copy) = e.refusal() {
                            let mut refused =
                                self.refused.lock().unwrap_or_else(|e| e.into_inner());
                            refused.retain(|_, (at, _)| at.elapsed() < REFUSAL_HOLD);
                            refused.insert(key, (Instant::now(), copy));
                        }
                        return Err(e);
                    }
                }
            }
            Source::Path { path, checksum } => {
                std::fs::metadata(path).map_err(|source| ImageError::Missing {
                    image: name.clone(),
                    source,
                })?;
                if let Some(expected) = checksum {
                    let actual = sha256_file(path).await?;
                    check(&name, expected, &actual)?;
                }
                path.clone()
            }
        };
        inspect(&path, &name, format).await
    }

    /// The refusal of the download `key` if it came less than [`REFUSAL_HOLD`] ago.
    fn refused_lately(&self, key: &str) -> Option<ImageError> {
        let refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        let (at, e) = refused.get(key)?;
        (at.elapsed() < REFUSAL_HOLD).then(|| e.refusal()).flatten()
    }

    /// The cached copy of `url`, fetched first if it is not there. A download is inspected
    /// before it takes its name in the cache: an image refused is never kept.
    async fn fetch(
        &self,
        url: &str,
        checksum: Option<&str>,
        trusted: bool,
        format: Option<&str>,
    ) -> Result<PathBuf> {
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
        let fetched = tokio::time::timeout(
            self.policy.timeout,
            download(url, &part, &self.policy, trusted),
        )
        .await
        .unwrap_or_else(|_| {
            Err(ImageError::Fetch {
                url: url.to_string(),
                message: format!("not done within {:?}", self.policy.timeout),
            })
        });
        let actual = match fetched {
            Ok(a) => a,
            Err(e) => {
                let _ = tokio::fs::remove_file(&part).await;
                return Err(e);
            }
        };
        let checked = match checksum {
            Some(expected) => check(url, expected, &actual),
            None => Ok(()),
        };
        let inspected = match checked {
            Ok(()) => inspect(&part, url, format).await.map(drop),
            Err(e) => Err(e),
        };
        if let Err(e) = inspected {
            let _ = tokio::fs::remove_file(&part).await;
            return Err(e);
        }
        super::qemu::write_whole(&sum_file, actual.as_bytes()).map_err(io(&sum_file))?;
        tokio::fs::rename(&part, &path).await.map_err(io(&path))?;
        sync_dir(&self.dir);
        tracing::info!(url, path = %path.display(), sha256 = %actual, "cached the image");
        Ok(path)
    }
}

/// Syncs a directory, so that a rename in it survives a crash.
pub(crate) fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
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

/// What `qemu-img info` says of a disk file of a VM (one the agent made; read while QEMU may
/// hold it). Never for an image from outside: [`inspect`] is for those.
pub(crate) async fn qemu_img_json(path: &Path) -> Result<serde_json::Value> {
    let out = qemu_img(&[
        "info".into(),
        "-U".into(),
        "-f".into(),
        "qcow2".into(),
        "--output=json".into(),
        path.display().to_string(),
    ])
    .await?;
    serde_json::from_slice(&out).map_err(|e| ImageError::QemuImg {
        args: format!("info {}", path.display()),
        message: format!("unreadable answer: {e}"),
    })
}

/// The format and virtual size of a disk file of a VM.
async fn qemu_img_info(path: &Path) -> Result<(String, u64)> {
    let info = qemu_img_json(path).await?;
    Ok((
        info["format"].as_str().unwrap_or("qcow2").to_string(),
        info["virtual-size"].as_u64().unwrap_or(0),
    ))
}

pub(crate) async fn qemu_img(args: &[String]) -> Result<Vec<u8>> {
    run_qemu_img(tokio::process::Command::new("qemu-img").args(args), args).await
}

async fn run_qemu_img(command: &mut tokio::process::Command, args: &[String]) -> Result<Vec<u8>> {
    let out = command
        .kill_on_drop(true)
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

/// Inspects an image from outside (called `name` in messages): its header first, by this
/// code, then `qemu-img info` with the format fixed and under CPU and memory limits. Only a
/// standalone raw or qcow2 image passes; `declared` is the format its ClusterImage demands.
pub async fn inspect(path: &Path, name: &str, declared: Option<&str>) -> Result<Image> {
    let refused = |why: String| ImageError::Refused {
        image: name.to_string(),
        why,
    };
    let header = read_header(path).map_err(|source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let format = sniff(&header).map_err(refused)?;
    if let Some(declared) = declared
        && declared != format
    {
        return Err(refused(format!(
            "it is a {format} image, its ClusterImage says {declared}"
        )));
    }
    let args: Vec<String> = [
        "info",
        "-U",
        "-f",
        format,
        "--output=json",
        &path.display().to_string(),
    ]
    .map(String::from)
    .to_vec();
    let mut command = tokio::process::Command::new("prlimit");
    command
        .arg(format!("--as={INSPECT_MEMORY}"))
        .arg(format!("--cpu={INSPECT_CPU_SECONDS}"))
        .arg("--")
        .arg("qemu-img")
        .args(&args);
    let out = run_qemu_img(&mut command, &args).await?;
    let info: serde_json::Value =
        serde_json::from_slice(&out).map_err(|e| ImageError::QemuImg {
            args: args.join(" "),
            message: format!("unreadable answer: {e}"),
        })?;
    if let Some(backing) = info["backing-filename"].as_str() {
        return Err(refused(format!(
            "it has a backing file ({backing:?}): an image must stand alone"
        )));
    }
    if let Some(data) = info["format-specific"]["data"]["data-file"].as_str() {
        return Err(refused(format!(
            "it has an external data file ({data:?}): an image must stand alone"
        )));
    }
    if info["format"].as_str() != Some(format) {
        return Err(refused(format!(
            "qemu-img reads it as {}, not {format}",
            info["format"]
        )));
    }
    let virtual_size = info["virtual-size"]
        .as_u64()
        .ok_or_else(|| refused("qemu-img gives no virtual size".into()))?;
    Ok(Image {
        path: path.to_path_buf(),
        format: format.to_string(),
        virtual_size,
    })
}

/// The first 64 KiB of a file (a qcow2 header and its extensions fit in its first cluster).
fn read_header(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut header = Vec::with_capacity(HEADER_BYTES);
    std::fs::File::open(path)?
        .take(HEADER_BYTES as u64)
        .read_to_end(&mut header)?;
    Ok(header)
}

/// The format of an image from its header: `qcow2` (without a backing file or an external
/// data file) or `raw`; any other format qemu knows is refused by name.
fn sniff(header: &[u8]) -> Result<&'static str, String> {
    const OTHERS: [(&[u8], &str); 8] = [
        (b"KDMV", "vmdk"),
        (b"COWD", "vmdk"),
        (b"# Disk DescriptorFile", "vmdk"),
        (b"vhdxfile", "vhdx"),
        (b"conectix", "vpc"),
        (b"QED\0", "qed"),
        (b"LUKS\xba\xbe", "luks"),
        (b"WithoutFreeSpace", "parallels"),
    ];
    if let Some((_, format)) = OTHERS.iter().find(|(magic, _)| header.starts_with(magic)) {
        return Err(format!(
            "it is a {format} image: only {} images are used",
            FORMATS.join(" and ")
        ));
    }
    if header.get(64..68) == Some(&0xbeda107f_u32.to_le_bytes()[..]) {
        return Err("it is a vdi image: only raw and qcow2 images are used".into());
    }
    if !header.starts_with(b"QFI\xfb") {
        return Ok("raw");
    }
    let be32 = |at: usize| {
        header
            .get(at..at + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let be64 = |at: usize| {
        header
            .get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
    };
    let version = be32(4).ok_or("its qcow2 header is cut short")?;
    if version < 2 {
        return Err("it is a qcow (version 1) image: only raw and qcow2 images are used".into());
    }
    if be64(8).ok_or("its qcow2 header is cut short")? != 0 {
        return Err("it has a backing file: an image must stand alone".into());
    }
    // Version 3 headers say whether the data lives in an external file (incompatible
    // feature bit 2) and how long they are; extensions follow.
    let extensions = if version >= 3 {
        let incompatible = be64(72).ok_or("its qcow2 header is cut short")?;
        if incompatible & 0b100 != 0 {
            return Err("it has an external data file: an image must stand alone".into());
        }
        be32(100).ok_or("its qcow2 header is cut short")? as usize
    } else {
        72
    };
    let mut at = extensions;
    while let (Some(kind), Some(len)) = (be32(at), be32(at + 4)) {
        match kind {
            0 => break,
            0x4441_5441 => {
                return Err("it names an external data file: an image must stand alone".into());
            }
            _ => at += 8 + (len as usize).div_ceil(8) * 8,
        }
    }
    Ok("qcow2")
}

/// Downloads `url` into `to` under `policy`, following redirects; returns the content's
/// sha256 (hex). A URL a tenant wrote (`trusted` false) and every redirect from it must
/// lead to public addresses or the policy's allowed networks, and the addresses checked are
/// the ones connected to (a name that resolves anew cannot slip past).
async fn download(url: &str, to: &Path, policy: &FetchPolicy, trusted: bool) -> Result<String> {
    let fail = |message: String| ImageError::Fetch {
        url: url.to_string(),
        message,
    };
    let mut current = url.to_string();
    let mut response = None;
    for _ in 0..=MAX_REDIRECTS {
        let uri: hyper::Uri = current
            .parse()
            .map_err(|e| fail(format!("{current:?} is not a valid URL: {e}")))?;
        let scheme = uri.scheme_str().unwrap_or_default().to_ascii_lowercase();
        if scheme != "http" && scheme != "https" {
            return Err(ImageError::Forbidden {
                url: url.to_string(),
                why: format!("{current:?} is not an http(s) URL"),
            });
        }
        let host = uri
            .host()
            .ok_or_else(|| fail(format!("{current:?} has no host")))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri
            .port_u16()
            .unwrap_or(if scheme == "https" { 443 } else { 80 });
        let addrs = tokio::time::timeout(CONNECT_TIMEOUT, resolve(&host, port))
            .await
            .map_err(|_| fail(format!("{host} did not resolve within {CONNECT_TIMEOUT:?}")))?
            .map_err(|e| fail(format!("{host} does not resolve: {e}")))?;
        if !trusted {
            allowed(&addrs, policy).map_err(|why| ImageError::Forbidden {
                url: url.to_string(),
                why: format!("{host} is {why}: an image URL in a VM's spec must lead to a public address (an admin may add it to the catalogue as a ClusterImage)"),
            })?;
        }
        let client = pinned_client(addrs).map_err(fail)?;
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
                    "{scheme}://{}{location}",
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
    let too_large = || ImageError::TooLarge {
        url: url.to_string(),
        limit: policy.max_bytes,
    };
    let announced = response
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if announced.is_some_and(|n| n > policy.max_bytes) {
        return Err(too_large());
    }
    let io = |source| ImageError::Io {
        path: to.to_path_buf(),
        source,
    };
    let mut file = tokio::fs::File::create(to).await.map_err(io)?;
    let mut digest = Digest::new(&SHA256);
    let mut body = response.into_body();
    let mut written = 0u64;
    // The image's start, judged as soon as it has arrived: a refused format, backing file
    // or data file stops the download there.
    let mut header = Vec::with_capacity(HEADER_BYTES);
    let started = Instant::now();
    loop {
        let frame = tokio::time::timeout(READ_TIMEOUT, body.frame())
            .await
            .map_err(|_| {
                fail(format!(
                    "the download stalled for {READ_TIMEOUT:?} after {written} bytes"
                ))
            })?;
        let Some(frame) = frame else { break };
        let frame = frame.map_err(|e| fail(format!("the download broke: {e}")))?;
        if let Some(data) = frame.data_ref() {
            written += data.len() as u64;
            if written > policy.max_bytes {
                return Err(too_large());
            }
            if header.len() < HEADER_BYTES {
                let take = data.len().min(HEADER_BYTES - header.len());
                header.extend_from_slice(&data[..take]);
                if header.len() == HEADER_BYTES {
                    sniff(&header).map_err(|why| ImageError::Refused {
                        image: url.to_string(),
                        why,
                    })?;
                }
            }
            digest.update(data);
            file.write_all(data).await.map_err(io)?;
        }
    }
    file.sync_all().await.map_err(io)?;
    tracing::debug!(url, bytes = written, elapsed = ?started.elapsed(), "downloaded");
    Ok(hex(digest.finish().as_ref()))
}

/// The addresses of `host` (an IP literal is its own).
async fn resolve(host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port)).await?.collect();
    if addrs.is_empty() {
        return Err(std::io::Error::other("no addresses"));
    }
    Ok(addrs)
}

/// Whether every address is public or in an allowed network; else which one is not.
fn allowed(addrs: &[SocketAddr], policy: &FetchPolicy) -> Result<(), String> {
    for addr in addrs {
        let ip = addr.ip();
        let class = AddressClass::of(ip);
        let granted = policy.allowed_networks.iter().any(|n| n.contains(ip));
        if class != AddressClass::Public && !granted {
            return Err(format!("{ip}, {}", class.describe()));
        }
    }
    Ok(())
}

type Pinned = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<
        hyper_util::client::legacy::connect::HttpConnector<PinnedResolver>,
    >,
    http_body_util::Empty<bytes::Bytes>,
>;

/// A resolver that answers every name with the addresses already checked.
#[derive(Debug, Clone)]
struct PinnedResolver(Arc<Vec<SocketAddr>>);

impl tower::Service<hyper_util::client::legacy::connect::dns::Name> for PinnedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = std::future::Ready<std::io::Result<Self::Response>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: hyper_util::client::legacy::connect::dns::Name) -> Self::Future {
        std::future::ready(Ok(self.0.as_ref().clone().into_iter()))
    }
}

/// A client that connects only to `addrs`, whatever name the URL has.
fn pinned_client(addrs: Vec<SocketAddr>) -> std::result::Result<Pinned, String> {
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new_with_resolver(
        PinnedResolver(Arc::new(addrs)),
    );
    http.enforce_http(false);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .map_err(|e| format!("no trusted roots: {e}"))?
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(https),
    )
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

    fn path(p: &Path, checksum: Option<String>) -> Source {
        Source::Path {
            path: p.to_path_buf(),
            checksum,
        }
    }

    fn url(u: String, checksum: Option<String>, trusted: bool) -> Source {
        Source::Url {
            url: u,
            checksum,
            trusted,
        }
    }

    #[tokio::test]
    async fn path_images_are_verified_and_back_overlays_and_blank_disks_get_their_size() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.raw");
        std::fs::write(&base, vec![7u8; 1 << 20]).unwrap();
        let images = Images::new(dir.path().join("cache"), FetchPolicy::default());
        let digest = hex(ring::digest::digest(&SHA256, &vec![7u8; 1 << 20]).as_ref());
        let image = images
            .get(&path(&base, Some(format!("sha256:{digest}"))), None)
            .await
            .unwrap();
        assert_eq!(
            (image.format.as_str(), image.virtual_size),
            ("raw", 1 << 20)
        );
        let wrong = images
            .get(
                &path(&base, Some(format!("sha256:{}", "0".repeat(64)))),
                None,
            )
            .await
            .unwrap_err();
        assert_eq!(wrong.reason(), "ImageChecksumMismatch", "{wrong}");
        let declared = images
            .get(&path(&base, None), Some("qcow2"))
            .await
            .unwrap_err();
        assert_eq!(declared.reason(), "ImageRefused", "{declared}");
        let missing = images
            .get(&path(Path::new("/nonexistent/x.qcow2"), None), None)
            .await
            .unwrap_err();
        assert_eq!(missing.reason(), "ImageNotFound", "{missing}");

        let overlay = dir.path().join("root.qcow2");
        create_disk(&overlay, Some(&image), Some(4 << 20))
            .await
            .unwrap();
        assert_eq!(
            qemu_img_info(&overlay).await.unwrap(),
            ("qcow2".into(), 4 << 20)
        );
        let info = qemu_img_json(&overlay).await.unwrap();
        assert_eq!(info["backing-filename-format"], "raw", "explicit: {info}");
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
        // A standalone qcow2 image passes and keeps its format.
        let q = inspect(&blank, "data", None).await.unwrap();
        assert_eq!((q.format.as_str(), q.virtual_size), ("qcow2", 16 << 20));
    }

    #[tokio::test]
    async fn images_that_reach_for_host_files_or_other_formats_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("host-secret");
        std::fs::write(&secret, vec![1u8; 1 << 20]).unwrap();
        let img = |args: &[&str]| {
            let out = std::process::Command::new("qemu-img")
                .args(args)
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
        };
        let s = secret.to_str().unwrap();
        // The CVE-2024-32498 class: a qcow2 whose backing file or data file is a host file.
        let backed = dir.path().join("backed.qcow2");
        img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "raw",
            "-b",
            s,
            backed.to_str().unwrap(),
        ]);
        let data = dir.path().join("data-file.qcow2");
        let opts = format!("data_file={s},data_file_raw=on");
        img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            &opts,
            data.to_str().unwrap(),
            "1M",
        ]);
        let vmdk = dir.path().join("x.vmdk");
        img(&["create", "-q", "-f", "vmdk", vmdk.to_str().unwrap(), "1M"]);
        for (file, why) in [
            (&backed, "backing file"),
            (&data, "external data file"),
            (&vmdk, "vmdk image"),
        ] {
            let e = inspect(file, "x", None).await.unwrap_err();
            assert_eq!(e.reason(), "ImageRefused", "{e}");
            assert!(e.to_string().contains(why), "{e}");
        }
        // A cut-short qcow2 header is refused, not trusted.
        let short = dir.path().join("short.qcow2");
        std::fs::write(&short, b"QFI\xfb\0\0").unwrap();
        let e = inspect(&short, "x", None).await.unwrap_err();
        assert!(e.to_string().contains("cut short"), "{e}");
    }

    /// An HTTP server on loopback: `/old.img` redirects to `/disk.img`, `/away.img` to
    /// `target`; counts the downloads of `/disk.img`.
    async fn serve(
        body: Vec<u8>,
        target: Option<String>,
    ) -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let served = Arc::new(AtomicUsize::new(0));
        let counter = served.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 2048];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]).to_string();
                let reply = if request.starts_with("GET /old.img ") {
                    "HTTP/1.1 302 Found\r\nLocation: /disk.img\r\nContent-Length: 0\r\n\r\n"
                        .to_string()
                } else if request.starts_with("GET /away.img ") {
                    let to = target.clone().unwrap_or_default();
                    format!("HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\n\r\n")
                } else if request.starts_with("GET /disk.img ") {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                    let _ = s.write_all(head.as_bytes()).await;
                    let _ = s.write_all(&body).await;
                    continue;
                } else {
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_string()
                };
                let _ = s.write_all(reply.as_bytes()).await;
            }
        });
        (port, served)
    }

    #[tokio::test]
    async fn url_images_are_fetched_once_verified_and_follow_redirects() {
        use std::sync::atomic::Ordering;
        let content: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let digest = hex(ring::digest::digest(&SHA256, &content).as_ref());
        let (port, served) = serve(content.clone(), None).await;
        let dir = tempfile::tempdir().unwrap();
        let images = Images::new(dir.path().join("cache"), FetchPolicy::default());
        let sum = Some(format!("sha256:{digest}"));
        let old = url(
            format!("http://127.0.0.1:{port}/old.img"),
            sum.clone(),
            true,
        );
        let image = images.get(&old, None).await.unwrap();
        assert_eq!(std::fs::read(&image.path).unwrap(), content);
        assert_eq!(image.format, "raw");
        let again = images.get(&old, None).await.unwrap();
        assert_eq!(again.path, image.path);
        assert_eq!(served.load(Ordering::SeqCst), 1, "fetched once per host");
        let wrong = images
            .get(
                &url(
                    format!("http://127.0.0.1:{port}/disk.img"),
                    Some(format!("sha256:{}", "0".repeat(64))),
                    true,
                ),
                None,
            )
            .await
            .unwrap_err();
        assert_eq!(wrong.reason(), "ImageChecksumMismatch", "{wrong}");
        let missing = images
            .get(
                &url(format!("http://127.0.0.1:{port}/nope.img"), None, true),
                None,
            )
            .await
            .unwrap_err();
        assert!(missing.to_string().contains("404"), "{missing}");
    }

    #[tokio::test]
    async fn a_refused_download_stops_at_its_header_and_is_not_fetched_again_soon() {
        use std::sync::atomic::Ordering;
        let dir = tempfile::tempdir().unwrap();
        let backed = dir.path().join("backed.qcow2");
        let out = std::process::Command::new("qemu-img")
            .args([
                "create",
                "-q",
                "-f",
                "qcow2",
                "-F",
                "raw",
                "-b",
                "/etc/shadow",
            ])
            .arg(&backed)
            .arg("1M")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        // The crafted header, then 8 MiB the host never needs to read.
        let mut body = std::fs::read(&backed).unwrap();
        body.resize(body.len() + (8 << 20), 0);
        let (port, served) = serve(body, None).await;
        let images = Images::new(dir.path().join("cache"), FetchPolicy::default());
        let source = url(format!("http://127.0.0.1:{port}/disk.img"), None, true);
        let first = images.get(&source, None).await.unwrap_err();
        assert_eq!(first.reason(), "ImageRefused", "{first}");
        assert!(first.to_string().contains("backing file"), "{first}");
        // Asked again (a VM's retry): the same refusal, without a download.
        let again = images.get(&source, None).await.unwrap_err();
        assert_eq!(again.to_string(), first.to_string());
        assert_eq!(served.load(Ordering::SeqCst), 1);
        // Nothing of it is left in the cache.
        let left: Vec<_> = std::fs::read_dir(dir.path().join("cache"))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "{left:?}");
        // A failure that may pass (a 404) is tried again at once.
        let missing = url(format!("http://127.0.0.1:{port}/nope.img"), None, true);
        assert!(images.refused_lately("x").is_none());
        images.get(&missing, None).await.unwrap_err();
        assert!(
            images
                .get(&missing, None)
                .await
                .unwrap_err()
                .to_string()
                .contains("404")
        );
    }

    #[tokio::test]
    async fn a_tenants_url_reaches_only_public_or_granted_addresses_and_is_size_capped() {
        let content = vec![3u8; 100_000];
        let (port, _) = serve(
            content,
            Some("http://169.254.169.254/latest/meta-data".into()),
        )
        .await;
        let dir = tempfile::tempdir().unwrap();
        let images = Images::new(dir.path().join("cache"), FetchPolicy::default());
        for (u, what) in [
            (
                format!("http://127.0.0.1:{port}/disk.img"),
                "127.0.0.1, a loopback address",
            ),
            (
                format!("http://localhost:{port}/disk.img"),
                "a loopback address",
            ),
            (
                "http://169.254.169.254/latest/meta-data".into(),
                "a link-local address",
            ),
            ("http://[::1]:1/x".into(), "::1, a loopback address"),
        ] {
            let e = images
                .get(&url(u.clone(), None, false), None)
                .await
                .unwrap_err();
            assert_eq!(e.reason(), "ImageSourceForbidden", "{u}: {e}");
            assert!(e.to_string().contains(what), "{u}: {e}");
        }
        // A network the admin grants is reachable, and a redirect from it is checked again.
        let granted = Images::new(
            dir.path().join("granted"),
            FetchPolicy {
                allowed_networks: vec!["127.0.0.0/8".parse().unwrap()],
                max_bytes: 50_000,
                ..FetchPolicy::default()
            },
        );
        let away = url(format!("http://127.0.0.1:{port}/away.img"), None, false);
        let e = granted.get(&away, None).await.unwrap_err();
        assert!(
            e.to_string()
                .contains("169.254.169.254, a link-local address"),
            "{e}"
        );
        let big = url(format!("http://127.0.0.1:{port}/disk.img"), None, false);
        let e = granted.get(&big, None).await.unwrap_err();
        assert_eq!(e.reason(), "ImageTooLarge", "{e}");
        let ftp = url("ftp://127.0.0.1/x".into(), None, true);
        let e = granted.get(&ftp, None).await.unwrap_err();
        assert_eq!(e.reason(), "ImageSourceForbidden", "{e}");
        assert!(
            !dir.path()
                .join("granted")
                .read_dir()
                .unwrap()
                .any(|e| e.is_ok()),
            "nothing is left in the cache"
        );
    }

    #[tokio::test]
    async fn unreachable_urls_fail_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let images = Images::new(dir.path().join("cache"), FetchPolicy::default());
        // A port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = images
            .get(
                &url(format!("http://127.0.0.1:{port}/img.qcow2"), None, true),
                None,
            )
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
