//! Paged manifests: a disk of more chunks than a page holds sends its ids a page at a time and
//! a manifest of page hashes (made small here with `--chunks-per-page 16` and 64 KiB chunks, so
//! a few MiB make several pages). The copy comes back whole (`b3sum` of the export), the store's
//! own check reads the pages, a damaged page is found, and the receiver refuses pages that are
//! not the disk's, a missing page and a page that does not merge to its hash.

mod support;

use ferry::disk::{DiskIdentity, PartitionTable, TableKind};
use ferry::image::manifest::ManifestPage;
use ferry::image::pages::{self, Pages};
use ferry::image::treehash::{self, chunk_id, Digest};
use ferry::image::{ChunkEntry, Manifest, PAGED_MANIFEST_VERSION};
use serde_json::Value;
use support::*;

const KIB: u64 = 1024;
const CHUNK: u64 = 64 * KIB;

#[test]
fn a_disk_of_many_pages_is_sent_in_pages_and_exported_whole() {
    let t = tempfile::tempdir().unwrap();
    // 70 chunks of 64 KiB and a short one: 5 pages of 16, the last holding 7.
    let big = t.path().join("big.img");
    make_file(&big, 70 * CHUNK + 1000);
    write_at(&big, 0, &pseudo_random(3 * CHUNK as usize + 17, 1));
    write_at(&big, 33 * CHUNK + 500, &pseudo_random(40 * KIB as usize, 2));
    write_at(&big, 70 * CHUNK, &pseudo_random(1000, 3));
    // A disk of one page goes inline beside it.
    let small = t.path().join("small.img");
    random_image(&small, 10 * CHUNK as usize, 4);

    let r = Receiver::start(&t.path().join("store"), false);
    let (id, token) = r.create_job("paged");
    let extra = ["--chunk-size", "65536", "--chunks-per-page", "16"];
    let out = sent(&r.send(&id, &token, &[&big, &small], &extra));
    assert_eq!(out["disks"][0]["blake3"].as_str().unwrap(), b3sum(&big));
    assert_eq!(out["disks"][0]["chunks"], 71);
    assert_eq!(out["disks"][1]["blake3"].as_str().unwrap(), b3sum(&small));
    assert_eq!(r.job(&id)["state"], "Finished");

    let kept = r.store.join("manifests").join(&id);
    let head: Value = serde_json::from_slice(&std::fs::read(kept.join("0.json")).unwrap()).unwrap();
    assert_eq!(head["version"], 2);
    assert_eq!(head["chunks"].as_array().unwrap().len(), 0, "the head holds no ids");
    assert_eq!(head["pages"]["chunks_per_page"], 16);
    assert_eq!(head["pages"]["cvs"].as_array().unwrap().len(), 5);
    // Each page is kept under its number and its hash, as the head lists it.
    let page_file = |n: usize| kept.join(format!("0.pages/{n}.{}.json", head["pages"]["cvs"][n].as_str().unwrap()));
    let last: Value = serde_json::from_slice(&std::fs::read(page_file(4)).unwrap()).unwrap();
    assert_eq!(last["chunks"].as_array().unwrap().len(), 7);
    let inline: Value = serde_json::from_slice(&std::fs::read(kept.join("1.json")).unwrap()).unwrap();
    assert_eq!((inline["version"].clone(), inline["chunks"].as_array().unwrap().len()), (Value::from(1), 10));
    assert!(!kept.join("1.pages").exists());

    assert_eq!(export_b3sum(&r, &id, 0, t.path()), b3sum(&big));
    assert_eq!(export_b3sum(&r, &id, 1, t.path()), b3sum(&small));
    let store = r.store.to_str().unwrap();
    let clean = ferry(&["store", "verify", "--store", store, "--json"]);
    assert!(clean.status.success(), "{}", String::from_utf8_lossy(&clean.stdout));
    let report: Value = serde_json::from_slice(&clean.stdout).unwrap();
    assert_eq!(report["manifests_checked"].as_array().unwrap().len(), 2);

    // A page changed on disk: a data chunk marked zero (an export would write zeros there).
    let page2 = page_file(2);
    let mut p: Value = serde_json::from_slice(&std::fs::read(&page2).unwrap()).unwrap();
    p["chunks"][1]["id"] = p["chunks"][0]["id"].clone();
    std::fs::write(&page2, serde_json::to_vec(&p).unwrap()).unwrap();
    let damaged = ferry(&["store", "verify", "--store", store, "--json"]);
    assert_eq!(damaged.status.code(), Some(1));
    let text = String::from_utf8_lossy(&damaged.stdout);
    assert!(text.contains("page 2") && text.contains("manifest"), "{text}");
    let to = t.path().join("x.img");
    let ex = ferry(&["export", "--store", store, "--job", &id, "--disk", "0", "--to", to.to_str().unwrap()]);
    assert!(!ex.status.success());
    assert!(String::from_utf8_lossy(&ex.stderr).contains("page 2"), "{}", String::from_utf8_lossy(&ex.stderr));
}

/// Talks to a receiver as a source agent would, with hand-made pages and manifests.
struct Agent {
    base: String,
    token: String,
    http: reqwest::Client,
    rt: tokio::runtime::Runtime,
}

impl Agent {
    fn new(r: &Receiver, name: &str, size: u64) -> Self {
        let (id, token) = r.create_job(name);
        ferry::tls::install_crypto_provider();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let http = reqwest::Client::new();
        let a = Agent { base: format!("{}/api/v1/jobs/{id}", r.url), token, http, rt };
        let identity = identity(size);
        let reg = serde_json::json!({"machine": {}, "disks": [identity]});
        assert_eq!(a.call("POST", "/register", &reg).0, 200);
        let table = PartitionTable::empty(TableKind::None, 512);
        let begin =
            serde_json::json!({"identity": identity, "partition_table": table, "size": size, "chunk_size": CHUNK});
        assert_eq!(a.call("POST", "/disks/0/begin", &begin).0, 204);
        a
    }

    fn call(&self, method: &str, path: &str, body: &impl serde::Serialize) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let req = self.http.request(m, format!("{}{path}", self.base)).bearer_auth(&self.token).json(body);
        self.rt.block_on(async {
            let resp = req.send().await.unwrap();
            (resp.status().as_u16(), resp.json().await.unwrap_or(Value::Null))
        })
    }

    fn page(&self, p: &ManifestPage) -> (u16, Value) {
        self.call("PUT", &format!("/disks/0/pages/{}", p.page), p)
    }
}

fn identity(size: u64) -> DiskIdentity {
    DiskIdentity { path: "/dev/sdz".into(), kind: "block".into(), size, logical_sector_size: 512, ..Default::default() }
}

/// An all-zero disk of `size` bytes: its pages of 16 and its paged manifest.
fn zero_disk(size: u64) -> (Vec<ManifestPage>, Manifest) {
    let count = treehash::chunk_count(size, CHUNK);
    let entries: Vec<ChunkEntry> = (0..count)
        .map(|i| {
            let len = treehash::chunk_len(size, CHUNK, i) as usize;
            ChunkEntry { id: chunk_id(&vec![0; len], i * CHUNK, size, CHUNK), zero: true }
        })
        .collect();
    let pages: Vec<ManifestPage> = entries
        .chunks(16)
        .enumerate()
        .map(|(p, c)| ManifestPage { page: p as u64, chunks_per_page: 16, chunks: c.to_vec() })
        .collect();
    let cvs: Vec<Digest> = pages
        .iter()
        .map(|p| pages::page_cv(&p.chunks.iter().map(|c| c.id).collect::<Vec<_>>(), p.page * 16, size, CHUNK))
        .collect();
    let manifest = Manifest {
        version: PAGED_MANIFEST_VERSION,
        identity: identity(size),
        partition_table: PartitionTable::empty(TableKind::None, 512),
        size,
        chunk_size: CHUNK,
        blake3: *blake3::hash(&vec![0; size as usize]).as_bytes(),
        chunks: vec![],
        bad_ranges: vec![],
        used_only: None,
        pages: Some(Pages { chunks_per_page: 16, cvs }),
    };
    manifest.validate().expect("the page hashes merge to the b3sum of zeros");
    (pages, manifest)
}

/// `pages` with their hashes, and the manifest's, made to agree again after a change.
fn rehash(pages: &[ManifestPage], mut m: Manifest) -> Manifest {
    let cvs: Vec<Digest> = pages
        .iter()
        .map(|p| pages::page_cv(&p.chunks.iter().map(|c| c.id).collect::<Vec<_>>(), p.page * 16, m.size, CHUNK))
        .collect();
    m.blake3 = pages::root_from_page_cvs(&cvs, m.size, CHUNK, 16).unwrap();
    m.pages = Some(Pages { chunks_per_page: 16, cvs });
    m.validate().unwrap();
    m
}

fn code(answer: &(u16, Value)) -> (u16, Option<&str>) {
    (answer.0, answer.1["code"].as_str())
}

#[test]
fn pages_that_are_not_the_disks_and_incomplete_manifests_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let r = Receiver::start(&t.path().join("store"), true);
    let size = 64 * CHUNK;
    let (good, manifest) = zero_disk(size);
    assert_eq!(good.len(), 4);

    let a = Agent::new(&r, "pages-refused", size);
    let mut wrong_count = good[1].clone();
    wrong_count.chunks.pop();
    let (status, answer) = a.page(&wrong_count);
    assert_eq!((status, answer["code"].as_str()), (400, Some("bad_page")), "{answer}");
    let past = ManifestPage { page: 4, ..good[3].clone() };
    assert_eq!(code(&a.page(&past)), (400, Some("bad_page")));
    let odd_size = ManifestPage { chunks_per_page: 12, ..good[0].clone() };
    assert_eq!(code(&a.page(&odd_size)), (400, Some("bad_page")));
    // A page as large as the disk: the disk is not paged, its manifest carries its ids.
    let whole = ManifestPage { page: 0, chunks_per_page: 64, chunks: vec![good[0].chunks[0].clone(); 64] };
    assert_eq!(code(&a.page(&whole)), (400, Some("bad_page")));
    let misnamed = a.call("PUT", "/disks/0/pages/2", &good[1]);
    assert_eq!(code(&misnamed), (400, Some("bad_page")));
    // A page number whose first chunk index overflows a u64.
    let far = ManifestPage { page: 1 << 60, ..good[0].clone() };
    assert_eq!(code(&a.page(&far)), (400, Some("bad_page")));

    for p in &good {
        assert_eq!(a.page(p).0, 204);
    }
    let (status, verdict) = a.call("POST", "/disks/0/complete", &manifest);
    assert_eq!((status, verdict["verified"].as_bool()), (200, Some(true)), "{verdict}");
    assert_eq!(verdict["blake3"].as_str().unwrap(), hex::encode(manifest.blake3));
    // The pages of a verified disk are its manifest: they are not replaced.
    assert_eq!(code(&a.page(&good[0])), (400, Some("bad_page")));

    // A page never sent: the manifest is not whole, and the disk is not verified.
    let b = Agent::new(&r, "page-missing", size);
    for p in good.iter().filter(|p| p.page != 2) {
        assert_eq!(b.page(p).0, 204);
    }
    let answer = b.call("POST", "/disks/0/complete", &manifest);
    assert_eq!(code(&answer), (422, Some("manifest_invalid")), "{}", answer.1);
    assert!(answer.1["message"].as_str().unwrap().contains("page 2"), "{}", answer.1);

    // A page whose ids are not those the manifest's page hash stands for.
    let c = Agent::new(&r, "page-changed", size);
    let mut changed = good[3].clone();
    changed.chunks.swap(0, 1);
    for p in good.iter().take(3).chain([&changed]) {
        assert_eq!(c.page(p).0, 204);
    }
    let answer = c.call("POST", "/disks/0/complete", &manifest);
    assert_eq!(code(&answer), (422, Some("manifest_invalid")), "{}", answer.1);
    assert!(answer.1["message"].as_str().unwrap().contains("page 3"), "{}", answer.1);
    assert_ne!(r.job(&job_of(&c))["disks"][0]["verified"], true);

    // Whole pages that merge to their hashes, but a data chunk of page 1 was never uploaded,
    // or a chunk of page 2 is marked zero with the id zeros have elsewhere: each is named.
    let mut never_sent = good.clone();
    never_sent[1].chunks[0] = ChunkEntry { id: [7; 32], zero: false };
    let mut moved_zero = good.clone();
    moved_zero[2].chunks[1].id = good[2].chunks[0].id;
    for (name, pages, want, chunk) in [
        ("data-missing", never_sent, "chunk_missing", "chunk 16 "),
        ("zero-moved", moved_zero, "zero_mismatch", "chunk 33 "),
    ] {
        let m = rehash(&pages, manifest.clone());
        let d = Agent::new(&r, name, size);
        for p in &pages {
            assert_eq!(d.page(p).0, 204);
        }
        let answer = d.call("POST", "/disks/0/complete", &m);
        assert_eq!(code(&answer), (422, Some(want)), "{}", answer.1);
        assert!(answer.1["message"].as_str().unwrap().contains(chunk), "{}", answer.1);
    }

    // A paged manifest with its ids inline as well: it would be kept and served whole.
    let e = Agent::new(&r, "paged-and-inline", size);
    for p in &good {
        assert_eq!(e.page(p).0, 204);
    }
    let both = Manifest { chunks: good.iter().flat_map(|p| p.chunks.clone()).collect(), ..manifest.clone() };
    both.validate().expect("the ids agree with the page hashes");
    let answer = e.call("POST", "/disks/0/complete", &both);
    assert_eq!(code(&answer), (422, Some("manifest_invalid")), "{}", answer.1);
    assert!(answer.1["message"].as_str().unwrap().contains("not inline"), "{}", answer.1);
}

fn job_of(a: &Agent) -> String {
    a.base.rsplit('/').next().unwrap().to_string()
}

#[test]
fn a_paged_send_carries_on_across_a_receiver_restart_and_resumes_after_the_sender_is_killed() {
    use std::process::{Command, Stdio};
    use std::time::Duration;
    let t = tempfile::tempdir().unwrap();
    const MIB: usize = 1 << 20;
    // 64 chunks of 1 MiB in pages of 16, sent at 8 MiB/s.
    let img = t.path().join("src.img");
    random_image(&img, 64 * MIB, 21);
    let store = t.path().join("store");
    let mut r = Receiver::start(&store, false);
    let (id, token) = r.create_job("paged-restart");
    let slow = ["--chunk-size", "1M", "--chunks-per-page", "16", "--bandwidth-limit", "8M"];
    let sender = Command::new(FERRY)
        .args(r.send_args(&id, &token))
        .args(slow)
        .args(["--retry-for", "120", "--json"])
        .arg(&img)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let page_files = |job: &str| {
        std::fs::read_dir(store.join("manifests").join(job).join("0.pages")).map(|d| d.count()).unwrap_or(0)
    };
    let under_way = || page_files(&id) >= 1 && r.stored_chunks() >= 8;
    assert!(wait_until(Duration::from_secs(60), under_way), "no page was ever kept");
    let port = r.port;
    r.kill();
    drop(r);
    std::thread::sleep(Duration::from_secs(1));
    let r = Receiver::start_on(&store, false, port);
    // The same sender goes on: its uploads and pages are asked again until the receiver answers.
    let out = sent(&sender.wait_with_output().unwrap());
    assert_eq!(out["disks"][0]["blake3"].as_str().unwrap(), b3sum(&img));
    assert_eq!(page_files(&id), 4);
    assert_eq!(export_b3sum(&r, &id, 0, t.path()), b3sum(&img));

    // A sender killed part-way: the next one sends only what is missing, and every page again.
    let img2 = t.path().join("src2.img");
    random_image(&img2, 64 * MIB, 22);
    let (id2, token2) = r.create_job("paged-resume");
    let base = r.stored_chunks();
    let mut killed = Command::new(FERRY)
        .args(r.send_args(&id2, &token2))
        .args(slow)
        .arg(&img2)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let under_way = || page_files(&id2) >= 1 && r.stored_chunks() >= base + 8;
    assert!(wait_until(Duration::from_secs(60), under_way), "no page was ever kept");
    killed.kill().unwrap();
    killed.wait().unwrap();
    let held = r.stored_chunks() - base;
    assert!((8..64).contains(&held), "{held} chunks held");
    let out = sent(&r.send(&id2, &token2, &[&img2], &["--chunk-size", "1M", "--chunks-per-page", "16"]));
    assert_eq!(out["disks"][0]["sent_chunks"], (64 - held) as u64, "chunks already held were sent again");
    assert_eq!(r.job(&id2)["state"], "Finished");
    assert_eq!(export_b3sum(&r, &id2, 0, t.path()), b3sum(&img2));
}
