//! Buckets end to end: Bucket objects applied to a `keel server` become S3 buckets on its
//! storage agent, used unmodified by Debian's `aws` CLI and boto3 — small, empty and 50 MiB
//! (multipart) objects up and down, listing, sync, presigned and range GETs, deletion;
//! wrong secrets, other tenants' keys and expired URLs denied with S3's error codes; quotas,
//! malformed requests, key rotation, deletion policies; and a server killed in the middle of
//! uploads, after which every object is whole or absent.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use keel_client::{Api, Client, DeleteParams};
use keel_e2e::{KeelServer, condition_of, eventually, kind};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

/// A running server with a storage role, and a tenant's bucket.
struct Cluster {
    root: tempfile::TempDir,
    server: KeelServer,
    client: Client,
    /// The cluster CA (PEM file): the S3 endpoint's certificate is signed by it.
    ca: PathBuf,
}

async fn cluster() -> Cluster {
    cluster_with(&[]).await
}

async fn cluster_with(args: &[&str]) -> Cluster {
    let root = tempfile::tempdir().unwrap();
    let mut server = KeelServer::new(root.path(), "store-1");
    server.start(args);
    let (admin, ca) = eventually("credentials", WAIT, || async { server.try_admin() }).await;
    let client = Client::new(&server.url(), &ca, &admin).unwrap();
    let ca_file = root.path().join("cluster-ca.crt");
    std::fs::write(&ca_file, &ca).unwrap();
    Cluster {
        root,
        server,
        client,
        ca: ca_file,
    }
}

/// The credentials and endpoint of a Ready bucket, and the CA its endpoint's certificate
/// is checked with.
#[derive(Clone, Debug)]
struct Creds {
    ca: PathBuf,
    endpoint: String,
    bucket: String,
    access: String,
    secret: String,
}

async fn namespace(c: &Client, name: &str) {
    let nss: Api<Value> = Api::all(c, kind("namespaces"));
    nss.create(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}))
        .await
        .unwrap();
}

async fn bucket(c: &Client, ca: &Path, ns: &str, name: &str, spec: Value) -> Creds {
    let buckets: Api<Value> = Api::namespaced(c, kind("buckets"), ns);
    buckets
        .create(&json!({"apiVersion": "keel.dev/v1alpha1", "kind": "Bucket",
                        "metadata": {"name": name}, "spec": spec}))
        .await
        .unwrap();
    ready(c, ca, ns, name).await
}

async fn ready(c: &Client, ca: &Path, ns: &str, name: &str) -> Creds {
    let buckets: Api<Value> = Api::namespaced(c, kind("buckets"), ns);
    let secrets: Api<Value> = Api::namespaced(c, kind("secrets"), ns);
    eventually(
        &format!("bucket {ns}/{name} Ready with credentials"),
        WAIT,
        || async {
            let b = buckets.get(name).await.ok()?;
            (condition_of(&b, "Ready")?["status"] == "True").then_some(())?;
            let secret = secrets
                .get(b["status"]["secretName"].as_str()?)
                .await
                .ok()?;
            Some(Creds {
                ca: ca.to_path_buf(),
                endpoint: b["status"]["endpoint"].as_str()?.to_string(),
                bucket: b["status"]["bucketName"].as_str()?.to_string(),
                access: decode(&secret["data"]["AWS_ACCESS_KEY_ID"])?,
                secret: decode(&secret["data"]["AWS_SECRET_ACCESS_KEY"])?,
            })
        },
    )
    .await
}

fn decode(v: &Value) -> Option<String> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(v.as_str()?)
        .ok()?;
    String::from_utf8(bytes).ok()
}

/// Debian's `aws` (v2) with these credentials and nothing from the environment's config.
fn aws(creds: &Creds, args: &[&str]) -> Output {
    let aws = if Path::new("/usr/bin/aws").exists() {
        "/usr/bin/aws"
    } else {
        "aws"
    };
    Command::new(aws)
        .args(["--endpoint-url", &creds.endpoint])
        .args(["--ca-bundle", creds.ca.to_str().unwrap()])
        .args(args)
        .env("AWS_ACCESS_KEY_ID", &creds.access)
        .env("AWS_SECRET_ACCESS_KEY", &creds.secret)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_PAGER", "")
        .output()
        .expect("run the aws CLI (awscli)")
}

/// `aws` that must succeed: its standard output.
fn aws_ok(creds: &Creds, args: &[&str]) -> String {
    let out = aws(creds, args);
    assert!(
        out.status.success(),
        "aws {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// `aws` that must fail with S3 error `code`.
fn aws_err(creds: &Creds, args: &[&str], code: &str) {
    let out = aws(creds, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains(code),
        "aws {args:?}: expected {code}, got: {stderr}"
    );
}

/// Runs a boto3 script (`/usr/bin/python3`) with the credentials in its environment.
fn boto3(creds: &Creds, script: &str) -> String {
    let out = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .env("ENDPOINT", &creds.endpoint)
        .env("CA_BUNDLE", &creds.ca)
        .env("BUCKET", &creds.bucket)
        .env("AWS_ACCESS_KEY_ID", &creds.access)
        .env("AWS_SECRET_ACCESS_KEY", &creds.secret)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .output()
        .expect("run python3 (python3-boto3)");
    assert!(
        out.status.success(),
        "boto3 script failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

const BOTO3_PRELUDE: &str = r#"
import os, sys, hashlib, boto3, botocore
from botocore.config import Config
s3 = boto3.client("s3", endpoint_url=os.environ["ENDPOINT"], verify=os.environ["CA_BUNDLE"], config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))
B = os.environ["BUCKET"]
def code(f):
    try:
        f()
        return "OK"
    except botocore.exceptions.ClientError as e:
        return e.response["Error"]["Code"]
"#;

/// A file of `size` pseudo-random bytes.
fn file(dir: &Path, name: &str, size: usize) -> PathBuf {
    let path = dir.join(name);
    let mut x: u64 = size as u64 ^ 0x9e37_79b9_7f4a_7c15;
    let bytes: Vec<u8> = (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(&path, bytes).unwrap();
    path
}

fn same(a: &Path, b: &Path) -> bool {
    std::fs::read(a).unwrap() == std::fs::read(b).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buckets_work_with_the_aws_cli_and_boto3() {
    let c = cluster().await;
    namespace(&c.client, "shop").await;
    let creds = bucket(&c.client, &c.ca, "shop", "assets", json!({})).await;
    assert_eq!(creds.bucket, "shop-assets");
    let dir = c.root.path().join("files");
    std::fs::create_dir_all(&dir).unwrap();
    let s3 = |key: &str| format!("s3://{}/{key}", creds.bucket);

    // Small, empty, and 50 MiB (the CLI sends that as a multipart upload).
    for (name, size) in [("small.txt", 1000), ("empty", 0), ("big.bin", 50 << 20)] {
        let local = file(&dir, name, size);
        aws_ok(&creds, &["s3", "cp", local.to_str().unwrap(), &s3(name)]);
        let back = dir.join(format!("{name}.back"));
        aws_ok(&creds, &["s3", "cp", &s3(name), back.to_str().unwrap()]);
        assert!(same(&local, &back), "{name} comes back byte for byte");
    }
    let head: Value = serde_json::from_str(&aws_ok(
        &creds,
        &[
            "s3api",
            "head-object",
            "--bucket",
            &creds.bucket,
            "--key",
            "big.bin",
        ],
    ))
    .unwrap();
    assert_eq!(head["ContentLength"], 50 << 20);
    assert!(
        head["ETag"].as_str().unwrap().ends_with("-7\""),
        "a multipart ETag (50 MiB in 8 MiB parts): {head}"
    );
    let small: Value = serde_json::from_str(&aws_ok(
        &creds,
        &[
            "s3api",
            "head-object",
            "--bucket",
            &creds.bucket,
            "--key",
            "small.txt",
        ],
    ))
    .unwrap();
    let md5 = format!(
        "\"{:x}\"",
        md5_of(&std::fs::read(dir.join("small.txt")).unwrap())
    );
    assert_eq!(
        small["ETag"], md5,
        "a single PUT's ETag is the MD5 of its bytes"
    );
    let listing = aws_ok(&creds, &["s3", "ls", &s3("")]);
    for name in ["small.txt", "empty", "big.bin"] {
        assert!(listing.contains(name), "{listing}");
    }

    // sync up a tree, then down into another: the same files.
    let tree = dir.join("tree");
    for (i, sub) in ["a", "a/b", "c"].iter().enumerate() {
        std::fs::create_dir_all(tree.join(sub)).unwrap();
        file(&tree.join(sub), &format!("f{i}.dat"), 1000 * (i + 1));
    }
    aws_ok(
        &creds,
        &["s3", "sync", tree.to_str().unwrap(), &s3("tree/")],
    );
    let copy = dir.join("copy");
    aws_ok(
        &creds,
        &["s3", "sync", &s3("tree/"), copy.to_str().unwrap()],
    );
    for (i, sub) in ["a", "a/b", "c"].iter().enumerate() {
        let f = format!("{sub}/f{i}.dat");
        assert!(same(&tree.join(&f), &copy.join(&f)), "{f} synced");
    }
    let top = aws_ok(&creds, &["s3", "ls", &s3("tree/")]);
    assert!(
        top.contains("PRE a/") && top.contains("PRE c/"),
        "common prefixes: {top}"
    );

    // A presigned GET with curl; a range GET.
    let url = aws_ok(
        &creds,
        &["s3", "presign", &s3("small.txt"), "--expires-in", "300"],
    );
    let fetched = dir.join("presigned");
    let out = Command::new("curl")
        .args(["-sS", "-f", "--cacert", creds.ca.to_str().unwrap()])
        .args(["-o", fetched.to_str().unwrap(), url.trim()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(same(&fetched, &dir.join("small.txt")));
    let part = dir.join("range");
    aws_ok(
        &creds,
        &[
            "s3api",
            "get-object",
            "--bucket",
            &creds.bucket,
            "--key",
            "big.bin",
            "--range",
            "bytes=100-199",
            part.to_str().unwrap(),
        ],
    );
    let all = std::fs::read(dir.join("big.bin")).unwrap();
    assert_eq!(std::fs::read(&part).unwrap(), all[100..200]);

    // boto3: puts with metadata, copy, a multipart upload by hand, delete_objects.
    let out = boto3(
        &creds,
        &format!(
            "{BOTO3_PRELUDE}
s3.put_object(Bucket=B, Key='meta.txt', Body=b'hello', ContentType='text/plain', Metadata={{'owner': 'shop'}})
h = s3.head_object(Bucket=B, Key='meta.txt')
print('meta', h['ContentType'], h['Metadata']['owner'], h['ContentLength'])
s3.copy_object(Bucket=B, Key='copy.txt', CopySource={{'Bucket': B, 'Key': 'meta.txt'}})
print('copy', s3.get_object(Bucket=B, Key='copy.txt')['Body'].read().decode())
up = s3.create_multipart_upload(Bucket=B, Key='parts.bin')['UploadId']
p1 = b'a' * (5 << 20); p2 = b'b' * 1000
e1 = s3.upload_part(Bucket=B, Key='parts.bin', UploadId=up, PartNumber=1, Body=p1)['ETag']
e2 = s3.upload_part(Bucket=B, Key='parts.bin', UploadId=up, PartNumber=2, Body=p2)['ETag']
print('parts', len(s3.list_parts(Bucket=B, Key='parts.bin', UploadId=up)['Parts']))
r = s3.complete_multipart_upload(Bucket=B, Key='parts.bin', UploadId=up, MultipartUpload={{'Parts': [{{'ETag': e1, 'PartNumber': 1}}, {{'ETag': e2, 'PartNumber': 2}}]}})
want = hashlib.md5(hashlib.md5(p1).digest() + hashlib.md5(p2).digest()).hexdigest() + '-2'
print('etag', r['ETag'].strip('\"') == want)
print('whole', s3.get_object(Bucket=B, Key='parts.bin')['Body'].read() == p1 + p2)
d = s3.delete_objects(Bucket=B, Delete={{'Objects': [{{'Key': 'meta.txt'}}, {{'Key': 'copy.txt'}}]}})
print('deleted', len(d['Deleted']))
print('gone', code(lambda: s3.head_object(Bucket=B, Key='meta.txt')))
keys = [o['Key'] for o in s3.list_objects_v2(Bucket=B, Prefix='tree/', MaxKeys=2)['Contents']]
print('page', len(keys))
pages = s3.get_paginator('list_objects_v2').paginate(Bucket=B, PaginationConfig={{'PageSize': 2}})
print('all', sum(len(p.get('Contents', [])) for p in pages))
"
        ),
    );
    for line in [
        "meta text/plain shop 5",
        "copy hello",
        "parts 2",
        "etag True",
        "whole True",
        "deleted 2",
        "gone 404",
        "page 2",
        "all 7",
    ] {
        assert!(
            out.lines().any(|l| l == line),
            "boto3 printed {line:?}: {out}"
        );
    }

    // Delete with the CLI.
    aws_ok(&creds, &["s3", "rm", &s3("small.txt")]);
    aws_err(
        &creds,
        &[
            "s3api",
            "head-object",
            "--bucket",
            &creds.bucket,
            "--key",
            "small.txt",
        ],
        "404",
    );

    // Buckets are Keel objects: S3 cannot make or remove them.
    aws_err(
        &creds,
        &["s3api", "create-bucket", "--bucket", "shop-other"],
        "AccessDenied",
    );
    aws_err(
        &creds,
        &["s3api", "delete-bucket", "--bucket", &creds.bucket],
        "AccessDenied",
    );
}

fn md5_of(bytes: &[u8]) -> u128 {
    // A tiny MD5 (RFC 1321), so the test checks the server's ETag independently.
    let s: [u32; 64] = [
        7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 5, 9, 14, 20, 5, 9, 14, 20, 5,
        9, 14, 20, 5, 9, 14, 20, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 6, 10,
        15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21,
    ];
    let k: Vec<u32> = (0..64)
        .map(|i| ((i as f64 + 1.0).sin().abs() * 4_294_967_296.0) as u32)
        .collect();
    let mut msg = bytes.to_vec();
    let bits = (bytes.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend(bits.to_le_bytes());
    let (mut a0, mut b0, mut c0, mut d0) = (
        0x6745_2301u32,
        0xefcd_ab89u32,
        0x98ba_dcfeu32,
        0x1032_5476u32,
    );
    for chunk in msg.chunks(64) {
        let m: Vec<u32> = chunk
            .chunks(4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .collect();
        let (mut a, mut b, mut c, mut d) = (a0, b0, c0, d0);
        for i in 0..64 {
            let (f, g) = match i / 16 {
                0 => ((b & c) | (!b & d), i),
                1 => ((d & b) | (!d & c), (5 * i + 1) % 16),
                2 => (b ^ c ^ d, (3 * i + 5) % 16),
                _ => (c ^ (b | !d), (7 * i) % 16),
            };
            let f = f.wrapping_add(a).wrapping_add(k[i]).wrapping_add(m[g]);
            a = d;
            d = c;
            c = b;
            b = b.wrapping_add(f.rotate_left(s[i]));
        }
        a0 = a0.wrapping_add(a);
        b0 = b0.wrapping_add(b);
        c0 = c0.wrapping_add(c);
        d0 = d0.wrapping_add(d);
    }
    let digest: Vec<u8> = [a0, b0, c0, d0]
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect();
    u128::from_be_bytes(digest.try_into().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_keys_quotas_bad_requests_rotation_and_deletion_policies() {
    let c = cluster().await;
    namespace(&c.client, "shop").await;
    namespace(&c.client, "rival").await;
    let creds = bucket(
        &c.client,
        &c.ca,
        "shop",
        "assets",
        json!({"quota": {"bytes": "1Mi", "objects": 3}}),
    )
    .await;
    let rival = bucket(&c.client, &c.ca, "rival", "data", json!({})).await;
    let dir = c.root.path().join("files");
    std::fs::create_dir_all(&dir).unwrap();
    let small = file(&dir, "small", 1000);
    let s3 = |key: &str| format!("s3://{}/{key}", creds.bucket);
    aws_ok(&creds, &["s3", "cp", small.to_str().unwrap(), &s3("one")]);

    // Auth: a wrong secret, an unknown key, another tenant's key, an expired URL.
    let wrong = Creds {
        secret: "x".repeat(40),
        ..creds.clone()
    };
    aws_err(&wrong, &["s3", "ls", &s3("")], "SignatureDoesNotMatch");
    let unknown = Creds {
        access: "KEELUNKNOWNKEY000000".into(),
        ..creds.clone()
    };
    aws_err(&unknown, &["s3", "ls", &s3("")], "InvalidAccessKeyId");
    let other = Creds {
        bucket: creds.bucket.clone(),
        ..rival.clone()
    };
    aws_err(&other, &["s3", "ls", &s3("")], "AccessDenied");
    aws_err(&other, &["s3", "cp", &s3("one"), "-"], "403");
    let url = aws_ok(&creds, &["s3", "presign", &s3("one"), "--expires-in", "1"]);
    eventually("the presigned URL expires", WAIT, || async {
        let out = Command::new("curl")
            .args(["-sS", "--cacert", creds.ca.to_str().unwrap(), url.trim()])
            .output()
            .unwrap();
        let body = String::from_utf8_lossy(&out.stdout).to_string();
        (body.contains("<Code>AccessDenied</Code>") && body.contains("Request has expired"))
            .then_some(())
    })
    .await;
    // A client whose clock is an hour behind: its signed requests are refused as skewed.
    let skewed = boto3(
        &creds,
        &format!(
            "{BOTO3_PRELUDE}
import datetime
class Behind(datetime.datetime):
    @classmethod
    def utcnow(cls): return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) - datetime.timedelta(hours=1)
botocore.auth.datetime.datetime = Behind
print(code(lambda: s3.head_object(Bucket=B, Key='one')), code(lambda: s3.list_objects_v2(Bucket=B)))
"
        ),
    );
    assert_eq!(
        skewed.trim(),
        "403 RequestTimeTooSkewed",
        "a HEAD's error has no body, so boto3 names its status"
    );
    let anonymous = Command::new("curl")
        .args(["-sS", "--cacert", creds.ca.to_str().unwrap()])
        .arg(format!("{}/{}/one", creds.endpoint, creds.bucket))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&anonymous.stdout).contains("AccessDenied"),
        "a private bucket"
    );

    // Quotas: bytes and objects.
    let big = file(&dir, "big", 2 << 20);
    aws_err(
        &creds,
        &[
            "s3api",
            "put-object",
            "--bucket",
            &creds.bucket,
            "--key",
            "big",
            "--body",
            big.to_str().unwrap(),
        ],
        "QuotaExceeded",
    );
    aws_ok(&creds, &["s3", "cp", small.to_str().unwrap(), &s3("two")]);
    aws_ok(&creds, &["s3", "cp", small.to_str().unwrap(), &s3("three")]);
    aws_err(
        &creds,
        &[
            "s3api",
            "put-object",
            "--bucket",
            &creds.bucket,
            "--key",
            "four",
            "--body",
            small.to_str().unwrap(),
        ],
        "QuotaExceeded",
    );
    let buckets: Api<Value> = Api::namespaced(&c.client, kind("buckets"), "shop");
    eventually("usage in the status", WAIT, || async {
        let b = buckets.get("assets").await.ok()?;
        (b["status"]["usage"] == json!({"bytes": 3000, "objects": 3})).then_some(())
    })
    .await;

    // Malformed requests: S3 errors, and the endpoint goes on.
    let out = boto3(
        &creds,
        &format!(
            "{BOTO3_PRELUDE}
from botocore.awsrequest import AWSRequest
from botocore.auth import S3SigV4Auth
import ssl, urllib.request
def raw(method, path, body=b''):
    url = os.environ['ENDPOINT'] + path
    req = AWSRequest(method=method, url=url, data=body)
    S3SigV4Auth(boto3.Session().get_credentials(), 's3', 'us-east-1').add_auth(req)
    r = urllib.request.Request(url, data=body or None, method=method, headers=dict(req.headers))
    try:
        return urllib.request.urlopen(r, context=ssl.create_default_context(cafile=os.environ['CA_BUNDLE'])).read().decode()
    except urllib.error.HTTPError as e:
        return e.read().decode()
up = s3.create_multipart_upload(Bucket=B, Key='m')['UploadId']
print('badxml', 'MalformedXML' in raw('POST', '/' + B + '/m?uploadId=' + up, b'<CompleteMultipartUpload><Part>'))
print('badpart', code(lambda: s3.complete_multipart_upload(Bucket=B, Key='m', UploadId=up, MultipartUpload={{'Parts': [{{'ETag': '\"00\"', 'PartNumber': 1}}]}})))
print('nosuchupload', code(lambda: s3.upload_part(Bucket=B, Key='m', UploadId='nope', PartNumber=1, Body=b'x')))
print('range', code(lambda: s3.get_object(Bucket=B, Key='one', Range='bytes=5000-6000')))
print('longkey', code(lambda: s3.put_object(Bucket=B, Key='k' * 1100, Body=b'x')))
print('nosuchkey', code(lambda: s3.get_object(Bucket=B, Key='missing')))
print('nosuchbucket', code(lambda: s3.list_objects_v2(Bucket='no-such-bucket')))
print('ifnonematch', code(lambda: s3.get_object(Bucket=B, Key='one', IfNoneMatch=s3.head_object(Bucket=B, Key='one')['ETag'])))
print('still', s3.get_object(Bucket=B, Key='one')['ContentLength'])
"
        ),
    );
    for line in [
        "badxml True",
        "badpart InvalidPart",
        "nosuchupload NoSuchUpload",
        "range InvalidRange",
        "longkey KeyTooLongError",
        "nosuchkey NoSuchKey",
        "nosuchbucket NoSuchBucket",
        "ifnonematch 304",
        "still 1000",
    ] {
        assert!(
            out.lines().any(|l| l == line),
            "boto3 printed {line:?}: {out}"
        );
    }

    // Rotation: deleting the Secret issues new keys; the old ones stop working.
    let secrets: Api<Value> = Api::namespaced(&c.client, kind("secrets"), "shop");
    secrets
        .delete("assets-credentials", &DeleteParams::default())
        .await
        .unwrap();
    let rotated = eventually("new keys", WAIT, || async {
        let s = secrets.get("assets-credentials").await.ok()?;
        let access = decode(&s["data"]["AWS_ACCESS_KEY_ID"])?;
        (access != creds.access).then(|| Creds {
            access,
            secret: decode(&s["data"]["AWS_SECRET_ACCESS_KEY"]).unwrap_or_default(),
            ..creds.clone()
        })
    })
    .await;
    eventually("the old key refused", WAIT, || async {
        let out = aws(&creds, &["s3", "ls", &s3("")]);
        String::from_utf8_lossy(&out.stderr)
            .contains("InvalidAccessKeyId")
            .then_some(())
    })
    .await;
    eventually("the new key works", WAIT, || async {
        aws(&rotated, &["s3", "ls", &s3("")])
            .status
            .success()
            .then_some(())
    })
    .await;

    // Deletion: refused while objects remain under Retain; a Delete bucket goes with them.
    buckets
        .delete("assets", &DeleteParams::default())
        .await
        .unwrap();
    let blocked = eventually("deletion blocked", WAIT, || async {
        let b = buckets.get("assets").await.ok()?;
        let c = condition_of(&b, "Ready")?;
        (c["reason"] == "DeletionBlocked").then(|| c["message"].as_str().unwrap_or("").to_string())
    })
    .await;
    assert!(blocked.contains("still holds objects"), "{blocked}");
    assert!(
        aws(&rotated, &["s3", "ls", &s3("")]).status.success(),
        "still served meanwhile"
    );
    aws_ok(&rotated, &["s3", "rm", "--recursive", &s3("")]);
    eventually("the emptied bucket goes", WAIT, || async {
        buckets
            .get_opt("assets")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    let rivals: Api<Value> = Api::namespaced(&c.client, kind("buckets"), "rival");
    aws_ok(
        &rival,
        &[
            "s3",
            "cp",
            small.to_str().unwrap(),
            &format!("s3://{}/x", rival.bucket),
        ],
    );
    rivals
        .patch(
            "data",
            &keel_client::Patch::Merge(json!({"spec": {"deletePolicy": "Delete"}})),
        )
        .await
        .unwrap();
    rivals
        .delete("data", &DeleteParams::default())
        .await
        .unwrap();
    eventually("a Delete bucket goes with its objects", WAIT, || async {
        rivals.get_opt("data").await.ok()?.is_none().then_some(())
    })
    .await;
    let _ = &c.server;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_upload_leaves_objects_whole_or_absent() {
    let mut c = cluster().await;
    namespace(&c.client, "shop").await;
    let creds = bucket(&c.client, &c.ca, "shop", "assets", json!({})).await;
    let dir = c.root.path().join("files");
    std::fs::create_dir_all(&dir).unwrap();
    let big = file(&dir, "big", 120 << 20);
    // A single PUT and a multipart upload, both large, killed while they stream.
    let script = format!(
        "{BOTO3_PRELUDE}
import threading
from boto3.s3.transfer import TransferConfig
data = open(sys.argv[1], 'rb').read()
def single():
    try: s3.put_object(Bucket=B, Key='single', Body=data)
    except Exception as e: pass
def multi():
    try: s3.upload_file(sys.argv[1], B, 'multi', Config=TransferConfig(multipart_threshold=8 << 20, multipart_chunksize=8 << 20, max_concurrency=2))
    except Exception as e: pass
ts = [threading.Thread(target=single), threading.Thread(target=multi)]
for t in ts: t.start()
for t in ts: t.join()
"
    );
    let mut upload = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(&script)
        .arg(&big)
        .env("ENDPOINT", &creds.endpoint)
        .env("CA_BUNDLE", &creds.ca)
        .env("BUCKET", &creds.bucket)
        .env("AWS_ACCESS_KEY_ID", &creds.access)
        .env("AWS_SECRET_ACCESS_KEY", &creds.secret)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .spawn()
        .unwrap();
    let storage = c.server.dir().agent().storage();
    eventually("bytes arriving on disk", WAIT, || async {
        (dir_bytes(&storage) > 20 << 20).then_some(())
    })
    .await;
    c.server.kill();
    let _ = upload.kill();
    let _ = upload.wait();
    // Back on the same port: the endpoint the bucket's status names.
    let listen = creds.endpoint.trim_start_matches("https://").to_string();
    c.server.start(&["--s3-listen", &listen]);
    let creds = ready(&c.client, &c.ca, "shop", "assets").await;
    let out = boto3(
        &creds,
        &format!(
            "{BOTO3_PRELUDE}
data = open(sys.argv[1], 'rb').read() if len(sys.argv) > 1 else None
for key in ['single', 'multi']:
    try:
        body = s3.get_object(Bucket=B, Key=key)['Body'].read()
        print(key, 'whole' if len(body) == {size} else 'torn', len(body))
    except botocore.exceptions.ClientError as e:
        print(key, 'absent', e.response['Error']['Code'])
",
            size = 120 << 20
        ),
    );
    for key in ["single", "multi"] {
        let line = out.lines().find(|l| l.starts_with(key)).unwrap_or_default();
        assert!(
            line.contains("whole") || line.contains("absent"),
            "{key}: {out}"
        );
    }
    // And the store works on: a new upload of the same keys succeeds.
    aws_ok(
        &creds,
        &[
            "s3",
            "cp",
            big.to_str().unwrap(),
            &format!("s3://{}/single", creds.bucket),
        ],
    );
    let back = dir.join("back");
    aws_ok(
        &creds,
        &[
            "s3",
            "cp",
            &format!("s3://{}/single", creds.bucket),
            back.to_str().unwrap(),
        ],
    );
    assert!(same(&big, &back));
}

/// Bytes in the files under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| {
            let path = e.path();
            if path.is_dir() {
                dir_bytes(&path)
            } else {
                e.metadata().map_or(0, |m| m.len())
            }
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_serves_https_with_the_operators_certificate() {
    let root = tempfile::tempdir().unwrap();
    let (cert, key) = (root.path().join("s3.crt"), root.path().join("s3.key"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=keel-s3"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let mut server = KeelServer::new(root.path(), "store-tls");
    server.start(&[
        "--s3-tls-cert",
        cert.to_str().unwrap(),
        "--s3-tls-key",
        key.to_str().unwrap(),
    ]);
    let (admin, ca) = eventually("credentials", WAIT, || async { server.try_admin() }).await;
    let client = Client::new(&server.url(), &ca, &admin).unwrap();
    namespace(&client, "shop").await;
    let creds = bucket(&client, &cert, "shop", "secure", json!({})).await;
    assert!(
        creds.endpoint.starts_with("https://127.0.0.1:"),
        "{creds:?}"
    );
    let small = file(root.path(), "small", 5000);
    let target = format!("s3://{}/small", creds.bucket);
    aws_ok(&creds, &["s3", "cp", small.to_str().unwrap(), &target]);
    let back = root.path().join("back");
    aws_ok(&creds, &["s3", "cp", &target, back.to_str().unwrap()]);
    assert!(same(&small, &back));
    // With the cluster CA instead of the operator's the certificate is not trusted; plain
    // HTTP gets no S3.
    let cluster_ca = root.path().join("cluster-ca.crt");
    std::fs::write(&cluster_ca, &ca).unwrap();
    let untrusted = Creds {
        ca: cluster_ca,
        ..creds.clone()
    };
    let out = aws(&untrusted, &["s3", "ls", &format!("s3://{}", creds.bucket)]);
    assert!(!out.status.success());
    let plain = Command::new("curl")
        .args([
            "-sS",
            "-m",
            "5",
            &creds.endpoint.replace("https://", "http://"),
        ])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&plain.stdout).contains("<Code>"),
        "no S3 over HTTP"
    );
    drop(server);
}

/// Runs boto3 `script` (after the prelude) and returns its printed lines.
fn boto3_lines(creds: &Creds, script: &str) -> Vec<String> {
    boto3(creds, &format!("{BOTO3_PRELUDE}{script}"))
        .lines()
        .map(str::to_string)
        .collect()
}

/// Asserts that boto3 printed `line`.
fn printed(lines: &[String], line: &str) {
    assert!(
        lines.iter().any(|l| l == line),
        "boto3 printed {line:?}: {lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_confined_keys_parts_free_space_and_connections() {
    let mut c = cluster().await;
    namespace(&c.client, "shop").await;
    namespace(&c.client, "rival").await;
    let creds = bucket(
        &c.client,
        &c.ca,
        "shop",
        "assets",
        json!({"quota": {"bytes": "12Mi"}, "lifecycle": {"abortIncompleteMultipartUploadDays": 1}}),
    )
    .await;
    let s3 = |key: &str| format!("s3://{}/{key}", creds.bucket);
    let dir = c.root.path().join("files");
    std::fs::create_dir_all(&dir).unwrap();
    let small = file(&dir, "small", 1000);

    // HTTPS by default, with a certificate of the cluster CA: without the CA curl refuses it,
    // plain HTTP on the port gets no S3.
    assert!(
        creds.endpoint.starts_with("https://127.0.0.1:"),
        "{creds:?}"
    );
    aws_ok(&creds, &["s3", "cp", small.to_str().unwrap(), &s3("one")]);
    let untrusted = Command::new("curl")
        .args(["-sS", "-m", "5", &creds.endpoint])
        .output()
        .unwrap();
    assert_eq!(
        untrusted.status.code(),
        Some(60),
        "curl cannot verify the certificate without the CA: {}",
        String::from_utf8_lossy(&untrusted.stderr)
    );
    let plain = Command::new("curl")
        .args(["-sS", "-m", "5"])
        .arg(creds.endpoint.replace("https://", "http://"))
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&plain.stdout).contains("<Code>"),
        "no S3 over plain HTTP"
    );

    // A rival's Secret that claims the bucket (its label, an owner reference to the shop's
    // Bucket across namespaces) opens nothing.
    let buckets: Api<Value> = Api::namespaced(&c.client, kind("buckets"), "shop");
    let assets = buckets.get("assets").await.unwrap();
    let uid = assets["metadata"]["uid"].as_str().unwrap().to_string();
    let b64 = |s: &str| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(s)
    };
    let rival_secrets: Api<Value> = Api::namespaced(&c.client, kind("secrets"), "rival");
    rival_secrets
        .create(&json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "assets-credentials", "labels": {"keel.dev/bucket": creds.bucket},
                "ownerReferences": [{"apiVersion": "keel.dev/v1alpha1", "kind": "Bucket", "name": "assets", "uid": uid}]},
            "data": {"AWS_ACCESS_KEY_ID": b64("KEELFORGEDRIVAL00000"), "AWS_SECRET_ACCESS_KEY": b64(&"r".repeat(40))}}))
        .await
        .unwrap();
    let forged = Creds {
        access: "KEELFORGEDRIVAL00000".into(),
        secret: "r".repeat(40),
        ..creds.clone()
    };
    aws_err(&forged, &["s3", "ls", &s3("")], "InvalidAccessKeyId");
    // The credentials Secret the Bucket names, stripped of its owner reference and given
    // keys of the tenant's choosing: they open nothing, and an Event says why.
    let secrets: Api<Value> = Api::namespaced(&c.client, kind("secrets"), "shop");
    let mut own = secrets.get("assets-credentials").await.unwrap();
    own["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("ownerReferences");
    own["data"] = json!({"AWS_ACCESS_KEY_ID": b64("KEELUNOWNEDKEY000000"), "AWS_SECRET_ACCESS_KEY": b64(&"u".repeat(40))});
    secrets.update(&own).await.unwrap();
    let unowned = Creds {
        access: "KEELUNOWNEDKEY000000".into(),
        secret: "u".repeat(40),
        ..creds.clone()
    };
    eventually("the unowned Secret's key refused", WAIT, || async {
        let out = aws(&unowned, &["s3", "ls", &s3("")]);
        String::from_utf8_lossy(&out.stderr)
            .contains("InvalidAccessKeyId")
            .then_some(())
    })
    .await;
    aws_err(&creds, &["s3", "ls", &s3("")], "InvalidAccessKeyId");
    let events: Api<Value> = Api::namespaced(&c.client, kind("events"), "shop");
    let why = eventually("a CredentialsNotOwned event", WAIT, || async {
        let list = events.list(&Default::default()).await.ok()?;
        list.items
            .iter()
            .find(|e| e["reason"] == "CredentialsNotOwned")
            .map(|e| e["message"].as_str().unwrap_or("").to_string())
    })
    .await;
    assert!(why.contains("not owned by this Bucket"), "{why}");
    // Deleting it gets owned keys again.
    secrets
        .delete("assets-credentials", &DeleteParams::default())
        .await
        .unwrap();
    let creds = eventually("new owned keys", WAIT, || async {
        let s = secrets.get("assets-credentials").await.ok()?;
        s["metadata"]["ownerReferences"][0]["uid"]
            .as_str()
            .filter(|u| *u == uid)?;
        Some(Creds {
            access: decode(&s["data"]["AWS_ACCESS_KEY_ID"])?,
            secret: decode(&s["data"]["AWS_SECRET_ACCESS_KEY"])?,
            ..creds.clone()
        })
    })
    .await;
    eventually("the new key works", WAIT, || async {
        aws(&creds, &["s3", "ls", &s3("")])
            .status
            .success()
            .then_some(())
    })
    .await;
    // A further key of the tenant's: a Secret labelled for the bucket and owned by the
    // Bucket opens it (the controller lists it in status.keySecrets); the same without the
    // owner reference does not.
    let key_secret = |name: &str, access: &str, owner: bool| {
        let mut s = json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "labels": {"keel.dev/bucket": creds.bucket}},
            "data": {"AWS_ACCESS_KEY_ID": b64(access), "AWS_SECRET_ACCESS_KEY": b64(&"e".repeat(40))}});
        if owner {
            s["metadata"]["ownerReferences"] = json!([{"apiVersion": "keel.dev/v1alpha1",
                "kind": "Bucket", "name": "assets", "uid": uid}]);
        }
        s
    };
    secrets
        .create(&key_secret("assets-ci", "KEELEXTRAKEY00000001", true))
        .await
        .unwrap();
    secrets
        .create(&key_secret("assets-stray", "KEELSTRAYKEY00000001", false))
        .await
        .unwrap();
    let extra = Creds {
        access: "KEELEXTRAKEY00000001".into(),
        secret: "e".repeat(40),
        ..creds.clone()
    };
    eventually("the tenant's extra key works", WAIT, || async {
        aws(&extra, &["s3", "ls", &s3("")])
            .status
            .success()
            .then_some(())
    })
    .await;
    let b = buckets.get("assets").await.unwrap();
    assert_eq!(b["status"]["keySecrets"], json!(["assets-ci"]));
    let stray = Creds {
        access: "KEELSTRAYKEY00000001".into(),
        ..extra.clone()
    };
    aws_err(&stray, &["s3", "ls", &s3("")], "InvalidAccessKeyId");

    // Parts count toward the 12 MiB quota as they arrive: a second 8 MiB part is refused at
    // the part, naming the quota; an abort gives the room back.
    let lines = boto3_lines(
        &creds,
        "
part = b'p' * (8 << 20)
up = s3.create_multipart_upload(Bucket=B, Key='big')['UploadId']
print('part1', code(lambda: s3.upload_part(Bucket=B, Key='big', UploadId=up, PartNumber=1, Body=part)))
try:
    s3.upload_part(Bucket=B, Key='big', UploadId=up, PartNumber=2, Body=part)
    print('part2 OK')
except botocore.exceptions.ClientError as e:
    print('part2', e.response['Error']['Code'])
    print('message', e.response['Error']['Message'])
print('put', code(lambda: s3.put_object(Bucket=B, Key='mid', Body=b'm' * (5 << 20))))
print('listed', [u['UploadId'] == up for u in s3.list_multipart_uploads(Bucket=B).get('Uploads', [])])
s3.abort_multipart_upload(Bucket=B, Key='big', UploadId=up)
print('after abort', code(lambda: s3.put_object(Bucket=B, Key='mid', Body=b'm' * (5 << 20))))
",
    );
    printed(&lines, "part1 OK");
    printed(&lines, "part2 QuotaExceeded");
    printed(&lines, "put QuotaExceeded");
    printed(&lines, "listed [True]");
    printed(&lines, "after abort OK");
    let message = lines.iter().find(|l| l.starts_with("message")).unwrap();
    assert!(message.contains("quota of 12582912 bytes"), "{message}");
    // A lifecycle of 0 days is refused; 1 day keeps an upload started now (a real day's
    // wait is the store's unit test, whose clock is the rule's argument).
    let zero = buckets
        .patch(
            "assets",
            &keel_client::Patch::Merge(
                json!({"spec": {"lifecycle": {"abortIncompleteMultipartUploadDays": 0}}}),
            ),
        )
        .await;
    assert!(
        format!("{zero:?}").contains("abortIncompleteMultipartUploadDays"),
        "{zero:?}"
    );

    // Restart with a free-space floor above the free space, and small connection caps.
    let listen = creds.endpoint.trim_start_matches("https://").to_string();
    c.server.kill();
    c.server.start(&[
        "--s3-listen",
        &listen,
        "--storage-min-free",
        "1Ei",
        "--s3-max-connections-per-source",
        "8",
        "--s3-header-timeout",
        "4s",
    ]);
    let creds = ready(&c.client, &c.ca, "shop", "assets").await;
    let lines = boto3_lines(
        &creds,
        "
def err(f):
    try:
        f()
        return 'OK'
    except botocore.exceptions.ClientError as e:
        return '%s %s %s' % (e.response['ResponseMetadata']['HTTPStatusCode'], e.response['Error']['Code'], e.response['Error']['Message'])
print('put', err(lambda: s3.put_object(Bucket=B, Key='two', Body=b'x')))
up = s3.create_multipart_upload(Bucket=B, Key='m')['UploadId']
print('part', err(lambda: s3.upload_part(Bucket=B, Key='m', UploadId=up, PartNumber=1, Body=b'x')))
print('copy', err(lambda: s3.copy_object(Bucket=B, Key='copy', CopySource={'Bucket': B, 'Key': 'one'})))
print('get', len(s3.get_object(Bucket=B, Key='one')['Body'].read()))
",
    );
    for op in ["put", "part", "copy"] {
        let line = lines
            .iter()
            .find(|l| l.starts_with(&format!("{op} ")))
            .unwrap();
        assert!(
            line.contains("507 InsufficientStorage")
                && line.contains("keeps 1152921504606846976 bytes free (--storage-min-free)"),
            "{line}"
        );
    }
    printed(&lines, "get 1000");

    // A slowloris from 127.0.0.1: 24 connections trickling a TLS ClientHello. Past the
    // per-source cap of 8 they are closed at once; the API server answers meanwhile, and
    // S3 serves another source (127.0.0.2).
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut slow = Vec::new();
    for _ in 0..24 {
        let mut s = tokio::net::TcpStream::connect(&listen).await.unwrap();
        let _ = s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00]).await;
        slow.push(s);
    }
    let mut closed = 0;
    for s in &mut slow {
        let mut buf = [0u8; 16];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await
        {
            closed += 1;
        }
    }
    assert_eq!(closed, 16, "the connections past the per-source cap of 8");
    let api = Command::new("curl")
        .args(["-sS", "-m", "5", "--cacert", c.ca.to_str().unwrap()])
        .arg(format!("{}/readyz", c.server.url()))
        .output()
        .unwrap();
    assert!(
        api.status.success(),
        "the API server answers: {}",
        String::from_utf8_lossy(&api.stderr)
    );
    let other = Command::new("curl")
        .args(["-sS", "-m", "5", "--interface", "127.0.0.2"])
        .args(["--cacert", c.ca.to_str().unwrap()])
        .arg(format!("{}/{}/one", creds.endpoint, creds.bucket))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&other.stdout).contains("<Code>AccessDenied</Code>"),
        "S3 serves another source: {}{}",
        String::from_utf8_lossy(&other.stdout),
        String::from_utf8_lossy(&other.stderr)
    );
    // The slow ones are cut off by the handshake timeout, and 127.0.0.1 is served again.
    for s in &mut slow {
        let _ = s.write_all(&[0]).await;
    }
    let started = std::time::Instant::now();
    for s in &mut slow {
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(15), s.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0) | Err(_))),
            "a slow handshake is closed"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(15));
    aws_ok(&creds, &["s3", "ls", &s3("")]);
    drop(slow);
}

/// The serial number and end of the certificate `endpoint` (`https://IP:PORT`) serves, once
/// `openssl s_client` checked it against the CA file `ca` and the endpoint's IP address.
fn served_certificate(endpoint: &str, ca: &Path) -> Option<String> {
    let addr = endpoint.trim_start_matches("https://");
    let ip = addr.rsplit_once(':')?.0;
    let script = format!(
        "openssl s_client -connect {addr} -CAfile {} -verify_return_error -verify_ip {ip} </dev/null 2>/dev/null | openssl x509 -noout -serial -enddate",
        ca.display()
    );
    let out = Command::new("sh").args(["-c", &script]).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && text.starts_with("serial=")).then_some(text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hosts_agent_serves_s3_over_https_with_a_certificate_the_cluster_signs_and_renews() {
    use keel_e2e::{BridgedServer, KeelAgent};
    let root = tempfile::tempdir().unwrap();
    // Node certificates, and so the hosts' serving certificates, last 30 s: renewed at 20 s.
    let cluster = BridgedServer::start(root.path(), "s3", &["--node-cert-lifetime", "30s"]).await;
    let net = cluster.bridge.netns(2);
    let (url, ca, client) = (&cluster.url, &cluster.ca, &cluster.client);
    let (port, token) = (cluster.port, cluster.agent_token.as_str());
    let ca_file = root.path().join("cluster-ca.crt");
    std::fs::write(&ca_file, ca).unwrap();

    // A host in its own network namespace serves S3 with no certificate flag: HTTPS, with a
    // certificate the cluster signed for the address it reaches the cluster from.
    let mut host = KeelAgent::new(root.path(), "store-host", Some(&net));
    host.start(url, token, &["--s3-listen", "0.0.0.0:0"]);
    namespace(client, "shop").await;
    let creds = bucket(client, &ca_file, "shop", "remote", json!({})).await;
    assert!(
        creds
            .endpoint
            .starts_with(&format!("https://{}:", net.address)),
        "{creds:?}"
    );
    let small = file(root.path(), "small", 5000);
    let target = format!("s3://{}/small", creds.bucket);
    aws_ok(&creds, &["s3", "cp", small.to_str().unwrap(), &target]);
    let first = served_certificate(&creds.endpoint, &ca_file)
        .expect("the endpoint's certificate checks out against the cluster CA and its IP");
    // Renewed before it expires, without a restart; clients go on.
    let renewed = eventually("the S3 certificate renewed", WAIT, || async {
        served_certificate(&creds.endpoint, &ca_file).filter(|c| *c != first)
    })
    .await;
    assert_ne!(renewed, first);
    let back = root.path().join("back");
    aws_ok(&creds, &["s3", "cp", &target, back.to_str().unwrap()]);
    assert!(same(&small, &back));

    // What a host may not have signed. The test runs outside the namespace: it reaches the
    // server from the bridge's address, which is the server's own.
    let cert = std::fs::read_to_string(host.dir().node_cert()).unwrap();
    let key = std::fs::read_to_string(host.dir().node_key()).unwrap();
    let password = std::fs::read_to_string(host.dir().node_password()).unwrap();
    let node = Client::with_certificate(url, ca, &cert, &key).unwrap();
    let csr = "-----BEGIN CERTIFICATE REQUEST-----\nMIIBAA==\n-----END CERTIFICATE REQUEST-----\n";
    let ask = |name: &str, addresses: Value| {
        json!({"nodeName": name, "nodePassword": password.trim(), "csr": csr,
               "addresses": addresses})
    };
    let refusal = |r: Result<Value, keel_client::ClientError>| match r {
        Err(keel_client::ClientError::Api { code, message, .. }) => (code, message),
        other => panic!("expected a refusal, got {other:?}"),
    };
    for (addresses, code, why) in [
        (
            json!([net.address]),
            403,
            "not the address this request comes from",
        ),
        (json!([cluster.bridge.address()]), 403, "API servers"),
        (json!(["127.0.0.1"]), 403, "loopback"),
        (json!(["store-host"]), 400, "not an IP address"),
        (json!([]), 400, "addresses must list"),
    ] {
        let (got, message) = refusal(
            node.post(
                "/keel/v1/node-serving-certificate",
                &ask("store-host", addresses.clone()),
            )
            .await,
        );
        assert_eq!(got, code, "{addresses}: {message}");
        assert!(message.contains(why), "{addresses}: {message}");
    }
    let (got, message) = refusal(
        node.post(
            "/keel/v1/node-serving-certificate",
            &ask("other-host", json!([net.address])),
        )
        .await,
    );
    assert_eq!(got, 403, "{message}");
    assert!(
        message.contains("its own serving certificate only"),
        "{message}"
    );
    // The admin is no node.
    let (got, _) = refusal(
        client
            .post(
                "/keel/v1/node-serving-certificate",
                &ask("store-host", json!([net.address])),
            )
            .await,
    );
    assert_eq!(got, 403);

    // A host that reaches the cluster over loopback gets no certificate: its agent says why
    // and stops, rather than serve S3 in the clear.
    let mut local = KeelAgent::new(root.path(), "loop-host", None);
    local.start(
        &format!("https://127.0.0.1:{port}"),
        token,
        &["--s3-listen", "127.0.0.1:0"],
    );
    let deadline = std::time::Instant::now() + WAIT;
    let log = loop {
        let log = local.log();
        if log.contains("the cluster did not sign a serving certificate")
            || std::time::Instant::now() > deadline
        {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        log.contains("addresses[0] 127.0.0.1: a loopback address names no one host"),
        "{log}"
    );
    drop(host);
    drop(cluster);
}
