//! Disks of any size: a 64 TiB disk's manifest (a million chunks, made here from made-up ids,
//! not by hashing 64 TiB) goes to a real receiver, which judges it (here: its chunks were never
//! sent) within bounded memory; and the chunk size a large disk is cut into by default.

mod support;

use ferry::disk::{DiskIdentity, PartitionTable, TableKind};
use ferry::image::treehash::{self, default_chunk_size, Digest};
use ferry::image::{ChunkEntry, Manifest, MANIFEST_VERSION};
use support::*;

const TIB: u64 = 1 << 40;

#[test]
fn a_million_chunk_manifest_is_judged_in_bounded_memory() {
    let t = tempfile::tempdir().unwrap();
    let r = Receiver::start(&t.path().join("store"), true);
    let (id, token) = r.create_job("large-disk");
    let size = 64 * TIB;
    let chunk_size = default_chunk_size(size);
    assert_eq!(chunk_size, 64 << 20, "a 64 TiB disk is cut in the largest chunks");
    let count = treehash::chunk_count(size, chunk_size);
    assert_eq!(count, 1 << 20);

    let identity = DiskIdentity {
        path: "/dev/sdz".into(),
        kind: "block".into(),
        size,
        logical_sector_size: 512,
        physical_sector_size: 4096,
        ..Default::default()
    };
    let table = PartitionTable::empty(TableKind::None, 512);
    let base = format!("{}/api/v1/jobs/{id}", r.url);
    ferry::tls::install_crypto_provider();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let http = reqwest::Client::builder().timeout(std::time::Duration::from_secs(300)).build().unwrap();
    let post = |path: &str, body: Vec<u8>| {
        rt.block_on(async {
            let resp = http.post(format!("{base}{path}")).bearer_auth(&token).body(body).send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<serde_json::Value>().await.unwrap_or(serde_json::Value::Null))
        })
    };
    let reg = serde_json::json!({"machine": {}, "disks": [identity]});
    assert_eq!(post("/register", serde_json::to_vec(&reg).unwrap()).0, 200);
    let begin =
        serde_json::json!({"identity": identity, "partition_table": table, "size": size, "chunk_size": chunk_size});
    assert_eq!(post("/disks/0/begin", serde_json::to_vec(&begin).unwrap()).0, 204);

    // Ids that merge to a root of their own: a well-formed manifest of chunks never sent.
    let ids: Vec<Digest> = (0..count).map(|i| *blake3::hash(&i.to_le_bytes()).as_bytes()).collect();
    let root = treehash::root_from_ids(&ids, size, chunk_size).unwrap();
    let manifest = Manifest {
        version: MANIFEST_VERSION,
        identity,
        partition_table: table,
        size,
        chunk_size,
        blake3: root,
        chunks: ids.into_iter().map(|id| ChunkEntry { id, zero: false }).collect(),
        bad_ranges: vec![],
        used_only: None,
        pages: None,
    };
    let body = serde_json::to_vec(&manifest).unwrap();
    eprintln!("manifest of {count} chunks: {} MiB of JSON", body.len() >> 20);
    assert!(body.len() < 128 << 20, "{} bytes", body.len());
    drop(manifest);
    let (status, answer) = post("/disks/0/complete", body);
    assert_eq!((status, answer["code"].as_str()), (422, Some("chunk_missing")), "{answer}");
    assert!(answer["message"].as_str().unwrap().contains("chunk 0 "), "{answer}");
    let peak = r.peak_memory();
    eprintln!("receiver peak RSS: {} MiB", peak >> 20);
    assert!(peak < 512 << 20, "the receiver peaked at {} MiB judging one manifest", peak >> 20);
    assert_ne!(r.job(&id)["disks"][0]["verified"], true);
}

#[test]
fn a_paged_manifest_of_four_million_chunks_is_judged_a_page_at_a_time() {
    use ferry::image::manifest::ManifestPage;
    use ferry::image::pages::{self, Pages, DEFAULT_CHUNKS_PER_PAGE};
    let t = tempfile::tempdir().unwrap();
    let r = Receiver::start(&t.path().join("store"), true);
    let (id, token) = r.create_job("paged-large-disk");
    // 256 TiB in 64 MiB chunks: 4 million ids, 64 pages. Inline, its manifest would be about
    // 350 MB of JSON, past the 256 MiB a receiver takes in one body.
    let size = 256 * TIB;
    let chunk_size = default_chunk_size(size);
    let count = treehash::chunk_count(size, chunk_size);
    assert_eq!(count, 1 << 22);
    let per_page = DEFAULT_CHUNKS_PER_PAGE;

    let identity = DiskIdentity { path: "/dev/sdz".into(), kind: "block".into(), size, ..Default::default() };
    let table = PartitionTable::empty(TableKind::None, 512);
    let base = format!("{}/api/v1/jobs/{id}", r.url);
    ferry::tls::install_crypto_provider();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let http = reqwest::Client::builder().timeout(std::time::Duration::from_secs(300)).build().unwrap();
    let call = |method: reqwest::Method, path: &str, body: Vec<u8>| {
        rt.block_on(async {
            let req = http.request(method, format!("{base}{path}")).bearer_auth(&token).body(body);
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<serde_json::Value>().await.unwrap_or(serde_json::Value::Null))
        })
    };
    let reg = serde_json::json!({"machine": {}, "disks": [identity]});
    assert_eq!(call(reqwest::Method::POST, "/register", serde_json::to_vec(&reg).unwrap()).0, 200);
    let begin =
        serde_json::json!({"identity": identity, "partition_table": table, "size": size, "chunk_size": chunk_size});
    assert_eq!(call(reqwest::Method::POST, "/disks/0/begin", serde_json::to_vec(&begin).unwrap()).0, 204);

    // Made-up ids, a page at a time as an agent would send them; the last page is sent with two
    // ids swapped, so that it no longer merges to its hash and the receiver must read every page.
    let mut cvs: Vec<Digest> = vec![];
    let mut largest_page = 0;
    for page in 0..pages::page_count(count, per_page) {
        let range = pages::page_chunks(count, per_page, page);
        let ids: Vec<Digest> = range.clone().map(|i| *blake3::hash(&i.to_le_bytes()).as_bytes()).collect();
        cvs.push(pages::page_cv(&ids, range.start, size, chunk_size));
        let mut chunks: Vec<ChunkEntry> = ids.into_iter().map(|id| ChunkEntry { id, zero: false }).collect();
        if page == 63 {
            chunks.swap(0, 1);
        }
        let body = serde_json::to_vec(&ManifestPage { page, chunks_per_page: per_page, chunks }).unwrap();
        largest_page = largest_page.max(body.len());
        let (status, answer) = call(reqwest::Method::PUT, &format!("/disks/0/pages/{page}"), body);
        assert_eq!(status, 204, "page {page}: {answer}");
    }
    eprintln!("64 pages of {per_page} ids, each up to {} MiB of JSON", largest_page >> 20);
    let root = pages::root_from_page_cvs(&cvs, size, chunk_size, per_page).unwrap();
    let manifest = Manifest {
        version: ferry::image::PAGED_MANIFEST_VERSION,
        identity,
        partition_table: table,
        size,
        chunk_size,
        blake3: root,
        chunks: vec![],
        bad_ranges: vec![],
        used_only: None,
        pages: Some(Pages { chunks_per_page: per_page, cvs }),
    };
    manifest.validate().unwrap();
    let (status, answer) = call(reqwest::Method::POST, "/disks/0/complete", serde_json::to_vec(&manifest).unwrap());
    assert_eq!((status, answer["code"].as_str()), (422, Some("manifest_invalid")), "{answer}");
    assert!(answer["message"].as_str().unwrap().contains("page 63"), "{answer}");
    let peak = r.peak_memory();
    eprintln!("receiver peak RSS: {} MiB", peak >> 20);
    // Every id at once would be 4M x 33 bytes = 132 MiB before any JSON.
    assert!(peak < 64 << 20, "the receiver peaked at {} MiB judging a paged manifest", peak >> 20);
    assert_ne!(r.job(&id)["disks"][0]["verified"], true);
}
