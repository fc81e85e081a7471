//! LVM2 physical volumes: which extents hold logical volumes, and what each simple LV's
//! filesystem uses inside them. The PV label (sectors 0..4) points at metadata areas holding
//! the VG metadata, a text in a circular buffer, which gives this PV's extents and every LV's
//! segments. A linear LV wholly on this PV goes to the inner probe through a [`Volume`] mapping
//! its bytes onto the PV; any other LV (striped, thin, snapshot, RAID, mirror, cache, spanning
//! PVs, used by other LVs) is read whole. Extents of no LV are not read.

use super::{le32, le64, past_end, read_vec, RangeSet, Verdict, Volume};
use std::collections::BTreeMap;
use std::io;

const FS: &str = "LVM2";
const SECTOR: u64 = 512;
const MDA_MAGIC: &[u8; 16] = b" LVM2 x[5A%r0N*>";
/// LVM's `calc_crc`: CRC-32 (reflected 0xedb88320) from this seed, without final inversion.
const INITIAL_CRC: u32 = 0xf597_a6cf;
/// Metadata texts are kilobytes; anything larger is taken as garbage rather than read.
const MAX_TEXT: u64 = 64 << 20;
/// Real metadata nests four deep (vg / logical_volumes / lv / segment); bounds recursion.
const MAX_DEPTH: usize = 16;

/// ferry's probe for what a logical volume holds.
type Inner<'a> = &'a dyn Fn(&dyn Volume) -> Verdict;

/// Says which bytes of the LVM2 physical volume `vol` are used; `inner` probes each LV.
pub fn probe(vol: &dyn Volume, inner: &dyn Fn(&dyn Volume) -> Verdict) -> io::Result<Verdict> {
    let Some(label) = find_label(vol)? else { return Ok(Verdict::NotMine) };
    // Anything unreadable or unexpected past the label: read the PV whole, saying why.
    let verdict = label
        .and_then(|(uuid, mdas)| Layout::from_config(&read_metadata(vol, &mdas)?, &uuid)?.verdict(vol, inner, &mdas));
    Ok(verdict.unwrap_or_else(|reason| Verdict::whole(FS, reason)))
}

/// What the PV label says: the PV's UUID and its metadata areas (byte offset, size).
type Label = (Vec<u8>, Vec<(u64, u64)>);

/// Looks for "LABELONE" in the first four sectors. `None`: not LVM2; `Some(Err)`: an LVM2
/// label that cannot be trusted (the PV is read whole rather than handed to other probes).
fn find_label(vol: &dyn Volume) -> io::Result<Option<Result<Label, String>>> {
    for sector in (0..4u64).take_while(|s| (s + 1) * SECTOR <= vol.len()) {
        let b = read_vec(vol, sector * SECTOR, SECTOR as usize)?;
        if &b[0..8] == b"LABELONE" && &b[24..32] == b"LVM2 001" {
            return Ok(Some(parse_label(&b, sector)));
        }
    }
    Ok(None)
}

/// Decodes `label_header` and the `pv_header` after it, all within the one sector `b`.
fn parse_label(b: &[u8], sector: u64) -> Result<Label, String> {
    if le64(b, 8) != sector || le32(b, 16) != crc(INITIAL_CRC, &b[20..]) {
        return Err("LVM2 label with a wrong sector number or checksum".into());
    }
    // pv_header: 32-byte UUID, 8-byte device size, then two lists of (offset, size), each
    // ended by a zero offset: data areas, then metadata areas.
    let mut at = le32(b, 20) as usize;
    if !(32..=b.len() - 40).contains(&at) {
        return Err(format!("LVM2 pv_header offset {at} outside the label sector"));
    }
    let (uuid, mut mdas, mut list) = (b[at..at + 32].to_vec(), Vec::new(), 0);
    at += 40;
    while list < 2 {
        let Some(entry) = b.get(at..at + 16) else { return Err("LVM2 pv_header lists overrun".into()) };
        match (le64(entry, 0), le64(entry, 8)) {
            (0, _) => list += 1,
            (offset, size) if list == 1 => mdas.push((offset, size)),
            _ => {}
        }
        at += 16;
    }
    Ok((uuid, mdas))
}

fn crc(seed: u32, data: &[u8]) -> u32 {
    let bit = |c: u32, _| (c >> 1) ^ (0xedb8_8320 & (c & 1).wrapping_neg());
    data.iter().fold(seed, |c, &byte| (0..8).fold(c ^ u32::from(byte), bit))
}

/// Reads `len` bytes at `at`, not past the volume's end (when the PV is cut short).
fn read_checked(vol: &dyn Volume, at: u64, len: u64) -> Result<Vec<u8>, String> {
    if at.checked_add(len).is_none_or(|end| end > vol.len()) {
        return Err(format!("LVM2 metadata at {at} (+{len}) lies past the volume's end"));
    }
    read_vec(vol, at, len as usize).map_err(|e| format!("LVM2 metadata at {at} unreadable: {e}"))
}

/// The newest (highest `seqno`) readable metadata among the PV's metadata areas: both are
/// written at each change, but a crash between the two writes leaves one behind.
fn read_metadata(vol: &dyn Volume, mdas: &[(u64, u64)]) -> Result<Items, String> {
    let mut best: Option<(u64, Items)> = None;
    let mut why = "no metadata area on this PV (its VG metadata lives on other PVs)".to_string();
    for &(start, size) in mdas {
        let text = read_mda_text(vol, start, size);
        match text.and_then(|t| parse(&t).map_err(|e| format!("LVM2 metadata unparsable: {e}"))) {
            Ok(root) => {
                let seq = vg_of(&root).and_then(|(_, vg)| uint(vg, "seqno"));
                if best.as_ref().is_none_or(|(s, _)| seq.is_some_and(|seq| seq > *s)) {
                    best = Some((seq.unwrap_or(0), root));
                }
            }
            Err(r) => why = r,
        }
    }
    best.map(|(_, root)| root).ok_or(why)
}

/// Reads the committed metadata text of the area at `start` (`size` bytes with its header).
fn read_mda_text(vol: &dyn Volume, start: u64, size: u64) -> Result<Vec<u8>, String> {
    let h = read_checked(vol, start, SECTOR)?;
    let sum_ok = le32(&h, 0) == crc(INITIAL_CRC, &h[4..]);
    if &h[4..20] != MDA_MAGIC || le32(&h, 20) != 1 || !sum_ok || le64(&h, 24) != start || le64(&h, 32) != size {
        return Err(format!("no valid LVM2 metadata header at {start} (or not as the label says)"));
    }
    // raw_locns[0] is the committed text: its offset is relative to the area, and it wraps
    // past the area's end to just after the header.
    let (off, len, sum, flags) = (le64(&h, 40), le64(&h, 48), le32(&h, 56), le32(&h, 60));
    // None: an orphan PV. Ignored areas are not kept up to date.
    if off == 0 || len == 0 || flags & 1 != 0 {
        return Err(format!("LVM2 metadata area at {start} holds no VG metadata, or is ignored"));
    }
    if off < SECTOR || off >= size || len > size - SECTOR || len > MAX_TEXT {
        return Err(format!("LVM2 metadata location {off} (+{len}) is out of its area"));
    }
    let first = len.min(size - off);
    let mut text = read_checked(vol, start + off, first)?;
    text.extend(read_checked(vol, start + SECTOR, len - first)?);
    if crc(INITIAL_CRC, &text) != sum {
        return Err(format!("LVM2 metadata text at {start}: checksum mismatch"));
    }
    Ok(text)
}

/// A value in LVM's config format; a section is a list of named values.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Int(i64),
    Str(String),
    List(Vec<Value>),
    Section(Items),
}

type Items = Vec<(String, Value)>;

fn get<'a>(items: &'a Items, key: &str) -> Option<&'a Value> {
    items.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}
fn uint(items: &Items, key: &str) -> Option<u64> {
    get(items, key).and_then(|v| if let Value::Int(i) = v { u64::try_from(*i).ok() } else { None })
}
fn string<'a>(items: &'a Items, key: &str) -> Option<&'a str> {
    get(items, key).and_then(|v| if let Value::Str(s) = v { Some(s.as_str()) } else { None })
}
fn section<'a>(items: &'a Items, key: &str) -> Option<&'a Items> {
    get(items, key).and_then(|v| if let Value::Section(s) = v { Some(s) } else { None })
}
fn sections(items: &Items) -> impl Iterator<Item = (&String, &Items)> {
    items.iter().filter_map(|(k, v)| if let Value::Section(s) = v { Some((k, s)) } else { None })
}
/// The volume group: the one section at the top level of a metadata text.
fn vg_of(root: &Items) -> Option<(&String, &Items)> {
    sections(root).next()
}

/// A token of LVM's config format: punctuation, a string (unescaped) or a bare word.
#[derive(PartialEq)]
enum Tok {
    P(u8),
    Str(String),
    Word(String),
}

type Toks = std::iter::Peekable<std::vec::IntoIter<Tok>>;

/// Parses a metadata text (up to its first NUL: the stored text ends with one).
fn parse(text: &[u8]) -> Result<Items, String> {
    let end = text.iter().position(|&c| c == 0).unwrap_or(text.len());
    items(&mut tokens(&text[..end])?.into_iter().peekable(), 0)
}

fn tokens(s: &[u8]) -> Result<Vec<Tok>, String> {
    let (mut out, mut i) = (Vec::new(), 0);
    let lossy = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    while let Some(&c) = s.get(i) {
        match c {
            b'#' => i = s[i..].iter().position(|&c| c == b'\n').map_or(s.len(), |n| i + n),
            _ if c.is_ascii_whitespace() => i += 1,
            b'{' | b'}' | b'[' | b']' | b'=' | b',' => {
                out.push(Tok::P(c));
                i += 1;
            }
            b'"' => {
                let (start, mut v) = (i, Vec::new());
                i += 1;
                while s.get(i) != Some(&b'"') {
                    // A backslash escapes the next byte.
                    i += usize::from(s.get(i) == Some(&b'\\'));
                    let Some(&c) = s.get(i) else { return Err(format!("unterminated string at byte {start}")) };
                    v.push(c);
                    i += 1;
                }
                out.push(Tok::Str(lossy(&v)));
                i += 1;
            }
            _ => {
                let n = s[i..].iter().position(|c| c.is_ascii_whitespace() || b"{}[]=,\"#".contains(c));
                let n = n.unwrap_or(s.len() - i);
                out.push(Tok::Word(lossy(&s[i..i + n])));
                i += n;
            }
        }
    }
    Ok(out)
}

/// `name = value` and `name { ... }` entries up to the `}` closing a section at `depth` > 0,
/// or the end of the text at depth 0.
fn items(t: &mut Toks, depth: usize) -> Result<Items, String> {
    let mut items = Items::new();
    loop {
        let name = match t.next() {
            Some(Tok::Word(name)) => name,
            Some(Tok::P(b'}')) if depth > 0 => return Ok(items),
            None if depth == 0 => return Ok(items),
            _ => return Err(format!("expected a name after {} entries", items.len())),
        };
        let value = match t.next() {
            Some(Tok::P(b'{')) if depth < MAX_DEPTH => Value::Section(self::items(t, depth + 1)?),
            Some(Tok::P(b'=')) => value(t, true)?,
            _ => return Err(format!("expected '=' or '{{' after {name}")),
        };
        items.push((name, value));
    }
}

/// A string, an integer, or (when `list_ok`: lists do not nest) a list, maybe empty, with
/// perhaps a trailing comma.
fn value(t: &mut Toks, list_ok: bool) -> Result<Value, String> {
    match t.next() {
        Some(Tok::Str(s)) => Ok(Value::Str(s)),
        Some(Tok::Word(w)) => w.parse().map(Value::Int).map_err(|_| format!("bad value {w:?}")),
        Some(Tok::P(b'[')) if list_ok => {
            let mut list = Vec::new();
            while t.next_if_eq(&Tok::P(b']')).is_none() {
                list.push(value(t, false)?);
                if t.next_if_eq(&Tok::P(b',')).is_none() && t.peek() != Some(&Tok::P(b']')) {
                    return Err("expected ',' or ']' in a list".into());
                }
            }
            Ok(Value::List(list))
        }
        _ => Err("expected a value".into()),
    }
}

/// One LV segment as this probe needs it.
struct Seg {
    /// First logical extent, and number of extents.
    start: u64,
    count: u64,
    kind: String,
    stripe_count: u64,
    /// (PV name, first physical extent) of each area on a PV (of any PV in the VG).
    areas: Vec<(String, u64)>,
    /// Every other string in the segment but its type: the LVs it is stacked on or uses.
    names: Vec<String>,
}

impl Seg {
    fn from_config(seg: &Items, pvs: &[&String]) -> Option<Seg> {
        let mut s = Seg {
            start: uint(seg, "start_extent")?,
            count: uint(seg, "extent_count")?,
            kind: string(seg, "type")?.to_string(),
            stripe_count: uint(seg, "stripe_count").unwrap_or(0),
            areas: Vec::new(),
            names: Vec::new(),
        };
        for (key, value) in seg {
            match value {
                Value::Str(v) if key != "type" => s.names.push(v.clone()),
                // Area lists (`stripes`, `mirrors`, `raids`...) alternate a name and a number:
                // a PV with its first extent, or an LV with its first logical extent.
                Value::List(list) => {
                    for (i, v) in list.iter().enumerate() {
                        let Value::Str(name) = v else { continue };
                        match list.get(i + 1) {
                            Some(&Value::Int(pe)) if pvs.contains(&name) => s.areas.push((name.clone(), pe as u64)),
                            _ => s.names.push(name.clone()),
                        }
                    }
                }
                _ => {}
            }
        }
        Some(s)
    }

    /// Extents each area spans: a stripe's share, or all of a mirror leg (as pvmove makes);
    /// `None` for types whose areas should not be on a PV at all.
    fn area_len(&self) -> Option<u64> {
        match self.kind.as_str() {
            "striped" if self.count.checked_rem(self.stripe_count) == Some(0) => Some(self.count / self.stripe_count),
            "mirror" => Some(self.count),
            _ => None,
        }
    }
}

struct Lv {
    name: String,
    /// Sorted by first logical extent.
    segs: Vec<Seg>,
    /// (first physical extent, extents) of every area on this PV.
    here: Vec<(u64, u64)>,
}

/// A stretch of an LV on the PV, in bytes.
struct Piece {
    lv: u64,
    pv: u64,
    len: u64,
}

/// This PV within its VG, from the metadata; `pe_start` and `extent` in bytes.
struct Layout {
    vg: String,
    /// This PV's name in the metadata ("pv0"...).
    pv: String,
    pe_start: u64,
    pe_count: u64,
    extent: u64,
    lvs: Vec<Lv>,
    /// LV name -> an LV whose segments name it (snapshot, pool, RAID image, stacking...).
    users: BTreeMap<String, String>,
}

impl Layout {
    fn from_config(root: &Items, uuid: &[u8]) -> Result<Layout, String> {
        let Some((vg_name, vg)) = vg_of(root) else { return Err("no VG in LVM2 metadata".into()) };
        let sectors = |items: &Items, key| uint(items, key).and_then(|s| s.checked_mul(SECTOR));
        let Some(extent) = sectors(vg, "extent_size").filter(|&e| e > 0) else { return Err("no extent_size".into()) };
        let none = Items::new();
        let pvs = section(vg, "physical_volumes").unwrap_or(&none);
        let pv_names: Vec<&String> = sections(pvs).map(|(name, _)| name).collect();
        let lvs = section(vg, "logical_volumes").unwrap_or(&none);
        // Areas name a PV or an LV: one name for both would leave them ambiguous.
        if sections(lvs).any(|(name, _)| pv_names.contains(&name)) {
            return Err("an LV and a PV share a name".into());
        }
        // The label has the UUID bare; the metadata has it with dashes.
        let me = sections(pvs)
            .find(|(_, pv)| string(pv, "id").unwrap_or("").bytes().filter(|&c| c != b'-').eq(uuid.iter().copied()));
        let Some((pv_name, pv)) = me else { return Err("this PV is not in its VG's metadata".into()) };
        let (Some(pe_start), Some(pe_count)) = (sectors(pv, "pe_start"), uint(pv, "pe_count")) else {
            return Err(format!("LVM2 metadata of {pv_name} lacks a valid pe_start or pe_count"));
        };
        let (vg, pv, users) = (vg_name.clone(), pv_name.clone(), BTreeMap::new());
        let mut layout = Layout { vg, pv, pe_start, pe_count, extent, lvs: Vec::new(), users };
        for (name, lv) in sections(lvs) {
            layout.add_lv(name, lv, &pv_names)?;
        }
        Ok(layout)
    }

    /// Records an LV, the extents it holds on this PV and the LVs it uses.
    fn add_lv(&mut self, name: &str, lv: &Items, pvs: &[&String]) -> Result<(), String> {
        let segs: Option<Vec<Seg>> = sections(lv).map(|(_, seg)| Seg::from_config(seg, pvs)).collect();
        let Some(mut segs) = segs.filter(|s| uint(lv, "segment_count") == Some(s.len() as u64)) else {
            return Err(format!("LV {name}: segments incomplete, or not as many as segment_count"));
        };
        let mut here = Vec::new();
        for seg in &segs {
            for (_, pe) in seg.areas.iter().filter(|(pv, _)| *pv == self.pv) {
                // Unsure how far such an area reaches: no guessing which extents are free.
                let Some(len) = seg.area_len() else {
                    return Err(format!("LV {name}: {} segment on this PV", seg.kind));
                };
                // (A negative first extent in the text became huge here, and fails too.)
                if pe.checked_add(len).is_none_or(|end| end > self.pe_count) {
                    return Err(format!("LV {name}: extents {pe}+{len} past pe_count"));
                }
                here.push((*pe, len));
            }
            for used in seg.names.iter().filter(|n| *n != name) {
                self.users.entry(used.clone()).or_insert_with(|| name.to_string());
            }
        }
        segs.sort_by_key(|s| s.start);
        self.lvs.push(Lv { name: name.to_string(), segs, here });
        Ok(())
    }

    /// The pieces of a linear LV wholly on this PV, or why it is not one. An LV another uses
    /// is read whole: a snapshot still reads blocks its origin has since freed, and pools,
    /// RAID images and COW stores hold no filesystem of their own.
    fn simple(&self, lv: &Lv) -> Result<Vec<Piece>, String> {
        if let Some(user) = self.users.get(&lv.name) {
            return Err(format!("used by LV {user} (snapshot, pool, RAID or stacked)"));
        }
        let (mut pieces, mut next) = (Vec::new(), 0u64);
        for seg in &lv.segs {
            if seg.kind != "striped" || seg.stripe_count != 1 {
                return Err(format!("{} segment of {} stripes", seg.kind, seg.stripe_count));
            }
            let [(pv, pe)] = seg.areas.as_slice() else { return Err("segment stacked on another LV".into()) };
            if *pv != self.pv {
                return Err(format!("has extents on another PV ({pv})"));
            }
            // Contiguous logical extents, no more than the PV holds (this bounds the products).
            if seg.start != next || seg.count > self.pe_count - next {
                return Err("segments overlap or leave gaps".into());
            }
            let (lv, pv, len) = (next * self.extent, self.pe_start + pe * self.extent, seg.count * self.extent);
            pieces.push(Piece { lv, pv, len });
            next += seg.count;
        }
        Ok(pieces)
    }

    fn verdict(&self, vol: &dyn Volume, inner: Inner, mdas: &[(u64, u64)]) -> Result<Verdict, String> {
        let end = self.pe_count.checked_mul(self.extent).and_then(|d| d.checked_add(self.pe_start));
        let Some(end) = end.filter(|&e| e <= vol.len()) else { return Err("PV shorter than its extents".into()) };
        let mut used = RangeSet::new();
        // Label and metadata area before the extents, perhaps a second metadata area after;
        // and where the label puts them, whatever pe_start says.
        used.add(0, self.pe_start.max(4 * SECTOR));
        mdas.iter().for_each(|&(start, size)| used.add(start, size));
        used.add(end, vol.len() - end);
        let (mut notes, mut allocated) = (Vec::new(), 0u64);
        for lv in self.lvs.iter().filter(|lv| !lv.here.is_empty()) {
            let name = format!("{}/{}", self.vg, lv.name);
            match self.simple(lv).and_then(|pieces| probe_lv(vol, pieces, inner, &mut used)) {
                Ok(fs) => notes.push(format!("{name}: {fs}, used blocks only")),
                Err(reason) => {
                    notes.push(format!("{name}: read whole: {reason}"));
                    for &(pe, len) in &lv.here {
                        used.add(self.pe_start + pe * self.extent, len * self.extent);
                    }
                }
            }
            allocated += lv.here.iter().map(|(_, len)| len).sum::<u64>();
        }
        let free = self.pe_count.saturating_sub(allocated);
        notes.push(format!("{}: {free} of {} extents on this PV free", self.vg, self.pe_count));
        Ok(Verdict::Used { fs: FS.into(), ranges: used.finish(vol.len()), notes })
    }
}

/// Runs `inner` on a linear LV; adds the PV bytes it uses, or says why to read it whole.
fn probe_lv(vol: &dyn Volume, pieces: Vec<Piece>, inner: Inner, used: &mut RangeSet) -> Result<String, String> {
    let len = pieces.last().map_or(0, |p| p.lv + p.len);
    let lv = LvVolume { pv: vol, pieces, len };
    match inner(&lv) {
        Verdict::Used { fs, ranges, .. } => {
            for r in ranges {
                let (start, end) = (r.start, r.end.min(len));
                let first = lv.pieces.partition_point(|p| p.lv + p.len <= start);
                for p in lv.pieces.iter().skip(first).take_while(|p| p.lv < end) {
                    // A range crossing pieces is split: each part lies in its own extents.
                    let s = start.max(p.lv);
                    used.add(p.pv + (s - p.lv), end.min(p.lv + p.len).saturating_sub(s));
                }
            }
            Ok(fs)
        }
        Verdict::Whole { fs, reason } => Err(format!("{fs}: {reason}")),
        Verdict::NotMine => Err("unknown: no filesystem recognised".into()),
    }
}

/// A linear LV's logical bytes, read from the PV's extents.
struct LvVolume<'a> {
    pv: &'a dyn Volume,
    /// Sorted by `lv`, contiguous from 0.
    pieces: Vec<Piece>,
    len: u64,
}

impl Volume for LvVolume<'_> {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if offset.checked_add(buf.len() as u64).is_none_or(|end| end > self.len) {
            return Err(past_end(offset, buf.len(), self.len));
        }
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            // Pieces are contiguous up to `len`: there is always one.
            let p = &self.pieces[self.pieces.partition_point(|p| p.lv + p.len <= at)];
            let n = (p.lv + p.len - at).min((buf.len() - done) as u64) as usize;
            self.pv.read_at(&mut buf[done..done + n], p.pv + (at - p.lv))?;
            done += n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Metadata as LVM 2.03.16 wrote it (vgcreate, two lvcreate, one lvextend).
    const REAL: &str = r#"vgtry24782 {
id = "uZ2d9X-jB1v-LrC6-kqQa-Zcmj-TQAg-mZPw3s"
seqno = 4
format = "lvm2"
status = ["RESIZEABLE", "READ", "WRITE"]
flags = []
extent_size = 8192
max_lv = 0
max_pv = 0
metadata_copies = 0

physical_volumes {

pv0 {
id = "abj846-owC1-HibU-pePd-UTkH-qekh-ywE0j4"
device = "/dev/loop0"

status = ["ALLOCATABLE"]
flags = []
dev_size = 409600
pe_start = 2048
pe_count = 49
}
}

logical_volumes {

a {
id = "qTv49t-JMGt-XZ6R-mE40-hszn-a4nx-HcD16P"
status = ["READ", "WRITE", "VISIBLE"]
flags = []
creation_time = 1796589101
creation_host = "vm"
segment_count = 2

segment1 {
start_extent = 0
extent_count = 10

type = "striped"
stripe_count = 1

stripes = [
"pv0", 0
]
}
segment2 {
start_extent = 10
extent_count = 5

type = "striped"
stripe_count = 1

stripes = [
"pv0", 20
]
}
}
}

}
# Generated by LVM2 version 2.03.16(2) (2022-05-18): Sun Dec  6 20:31:41 2026

contents = "Text Format Volume Group"
version = 1

description = "Write from lvextend --config 'devices { filter = [ \"a|^/dev/loop0$|\", \"r|.*|\" ] }' -L +20M vgtry24782/a."

creation_host = "vm"	# Linux vm 6.18.44-fc-v1300 #1 SMP PREEMPT_DYNAMIC @0 x86_64
creation_time = 1796589101	# Sun Dec  6 20:31:41 2026
"#;

    #[test]
    fn parses_real_metadata() {
        let root = parse(format!("{REAL}\0junk after the NUL").as_bytes()).unwrap();
        let (name, vg) = vg_of(&root).unwrap();
        assert_eq!(name, "vgtry24782");
        assert_eq!(uint(vg, "extent_size"), Some(8192));
        let strs = |v: &[&str]| Value::List(v.iter().map(|s| Value::Str(s.to_string())).collect());
        assert_eq!(get(vg, "status"), Some(&strs(&["RESIZEABLE", "READ", "WRITE"])));
        assert_eq!(get(vg, "flags"), Some(&Value::List(vec![])));
        let pv = section(section(vg, "physical_volumes").unwrap(), "pv0").unwrap();
        assert_eq!(string(pv, "id"), Some("abj846-owC1-HibU-pePd-UTkH-qekh-ywE0j4"));
        assert_eq!((uint(pv, "pe_start"), uint(pv, "pe_count")), (Some(2048), Some(49)));
        let a = section(section(vg, "logical_volumes").unwrap(), "a").unwrap();
        let seg2 = section(a, "segment2").unwrap();
        let stripes = Value::List(vec![Value::Str("pv0".into()), Value::Int(20)]);
        assert_eq!(get(seg2, "stripes"), Some(&stripes));
        assert_eq!(string(seg2, "type"), Some("striped"));
        let desc = string(&root, "description").unwrap();
        assert!(desc.contains(r#"filter = [ "a|^/dev/loop0$|""#), "{desc}");
        assert_eq!(string(&root, "creation_host"), Some("vm"));
        assert_eq!(uint(&root, "version"), Some(1));
    }

    #[test]
    fn parser_rejects_malformed_text() {
        for bad in ["a {", "a = ", "a = [1, 2", "a = \"x", "a = [[1]]", "{ }", "a = 1x", "}"] {
            assert!(parse(bad.as_bytes()).is_err(), "{bad}");
        }
        let deep = "a {".repeat(100) + &"}".repeat(100);
        assert!(parse(deep.as_bytes()).is_err());
        assert_eq!(parse(b"# only a comment\n").unwrap(), Items::new());
        let v = parse(b"a = \"x\\\"y\" # no newline after this comment").unwrap();
        assert_eq!(string(&v, "a"), Some("x\"y"));
        let v = parse(b"k = [ \"x\", -3, ]  n=5").unwrap();
        assert_eq!(get(&v, "n"), Some(&Value::Int(5)));
    }

    const UUID: &[u8; 32] = b"abj846owC1HibUpePdUTkHqekhywE0j4";
    const MDA: u64 = 4096;
    const MDA_SIZE: u64 = 61440;
    const EXT: u64 = 4096;
    const PE0: u64 = 65536;

    /// A PV: label, one metadata area holding `text` (wrapping round the area's end when
    /// `wrap`), 32 extents of 4 KiB from 64 KiB whose bytes are their extent number, 4 KiB
    /// tail.
    fn synth(text: &str, wrap: bool) -> Vec<u8> {
        let mut d = vec![0u8; (PE0 + 32 * EXT + 4096) as usize];
        for pe in 0..32u64 {
            d[(PE0 + pe * EXT) as usize..(PE0 + (pe + 1) * EXT) as usize].fill(pe as u8);
        }
        let l = &mut d[512..1024];
        l[0..8].copy_from_slice(b"LABELONE");
        l[8] = 1;
        l[20] = 32;
        l[24..32].copy_from_slice(b"LVM2 001");
        l[32..64].copy_from_slice(UUID);
        l[72..80].copy_from_slice(&PE0.to_le_bytes());
        l[104..112].copy_from_slice(&MDA.to_le_bytes());
        l[112..120].copy_from_slice(&MDA_SIZE.to_le_bytes());
        let sum = crc(INITIAL_CRC, &l[20..]);
        l[16..20].copy_from_slice(&sum.to_le_bytes());
        let mut t = text.as_bytes().to_vec();
        t.push(0);
        let off = if wrap { MDA_SIZE - 100 } else { 512 };
        for (i, &c) in t.iter().enumerate() {
            let mut at = off + i as u64;
            if at >= MDA_SIZE {
                at = at - MDA_SIZE + 512;
            }
            d[(MDA + at) as usize] = c;
        }
        let h = &mut d[MDA as usize..MDA as usize + 512];
        h[4..20].copy_from_slice(MDA_MAGIC);
        h[20] = 1;
        h[24..32].copy_from_slice(&MDA.to_le_bytes());
        h[32..40].copy_from_slice(&MDA_SIZE.to_le_bytes());
        h[40..48].copy_from_slice(&off.to_le_bytes());
        h[48..56].copy_from_slice(&(t.len() as u64).to_le_bytes());
        h[56..60].copy_from_slice(&crc(INITIAL_CRC, &t).to_le_bytes());
        let sum = crc(INITIAL_CRC, &h[4..]);
        h[0..4].copy_from_slice(&sum.to_le_bytes());
        d
    }

    fn seg(n: u32, start: u32, count: u32, kind: &str, rest: &str) -> String {
        format!("segment{n} {{ start_extent = {start} extent_count = {count} type = \"{kind}\" {rest} }}")
    }
    fn lv(name: &str, segs: &[String]) -> String {
        format!("{name} {{ id = \"x\" segment_count = {} {} }}", segs.len(), segs.concat())
    }
    fn linear(n: u32, start: u32, count: u32, pv: &str, pe: u32) -> String {
        seg(n, start, count, "striped", &format!("stripe_count = 1 stripes = [\"{pv}\", {pe}]"))
    }

    /// a: extents 0-3 and 10-11; o (snapshot origin) 4-5; cow 6; st (2 stripes) 7-8; far on
    /// pv1 only; free 9 and 12-31.
    fn synth_text() -> String {
        let lvs = [
            lv("a", &[linear(1, 0, 4, "pv0", 0), linear(2, 4, 2, "pv0", 10)]),
            lv("o", &[linear(1, 0, 2, "pv0", 4)]),
            lv("cow", &[linear(1, 0, 1, "pv0", 6)]),
            lv("snap", &[seg(1, 0, 2, "snapshot", "origin = \"o\" cow_store = \"cow\"")]),
            lv("st", &[seg(1, 0, 4, "striped", "stripe_count = 2 stripes = [\"pv0\", 7, \"pv1\", 0]")]),
            lv("far", &[linear(1, 0, 3, "pv1", 2)]),
        ];
        format!(
            "vg {{ seqno = 3 extent_size = 8 physical_volumes {{
             pv0 {{ id = \"abj846-owC1-HibU-pePd-UTkH-qekh-ywE0j4\" pe_start = 128 pe_count = 32 }}
             pv1 {{ id = \"zzzzzz-owC1-HibU-pePd-UTkH-qekh-ywE0j4\" pe_start = 128 pe_count = 9 }} }}
             logical_volumes {{ {} }} }}\ncontents = \"Text Format Volume Group\"\nversion = 1\n",
            lvs.concat()
        )
    }

    /// For the synthetic PV: the 6-extent LV `a` uses bytes 0..100 and 20 bytes across its
    /// segment boundary (checking they read as extents 3 and 10); nothing else is known.
    fn synth_inner(v: &dyn Volume) -> Verdict {
        if v.len() != 6 * EXT {
            return Verdict::whole("unknown", "nothing recognised");
        }
        assert_eq!(read_vec(v, 4 * EXT - 2, 4).unwrap(), [3, 3, 10, 10]);
        assert_eq!(read_vec(v, 6 * EXT - 1, 1).unwrap(), [11]);
        assert!(v.read_at(&mut [0u8; 2], 6 * EXT - 1).is_err());
        let ranges = vec![0..100, 4 * EXT - 10..4 * EXT + 10];
        Verdict::Used { fs: "testfs".into(), ranges, notes: vec![] }
    }

    use crate::disk::used::testing::MemVolume as Mem;

    #[test]
    fn maps_synthetic_pv_with_wrapped_metadata() {
        for wrap in [false, true] {
            let v = probe(&Mem(synth(&synth_text(), wrap)), &synth_inner).unwrap();
            let Verdict::Used { fs, ranges, notes } = v else { panic!("{v:?}") };
            assert_eq!(fs, "LVM2");
            let want = [
                0..PE0 + 100,
                PE0 + 4 * EXT - 10..PE0 + 9 * EXT,
                PE0 + 10 * EXT..PE0 + 10 * EXT + 10,
                PE0 + 32 * EXT..PE0 + 33 * EXT,
            ];
            assert_eq!(ranges, want);
            let snap = "read whole: used by LV snap (snapshot, pool, RAID or stacked)";
            let want_notes = [
                "vg/a: testfs, used blocks only".to_string(),
                format!("vg/o: {snap}"),
                format!("vg/cow: {snap}"),
                "vg/st: read whole: striped segment of 2 stripes".into(),
                "vg: 21 of 32 extents on this PV free".into(),
            ];
            assert_eq!(notes, want_notes);
        }
    }

    #[test]
    fn whole_or_not_mine_when_unsure() {
        let text = synth_text();
        let is_whole = |d: Vec<u8>| matches!(probe(&Mem(d), &synth_inner), Ok(Verdict::Whole { .. }));
        assert_eq!(probe(&Mem(vec![0; 4096]), &synth_inner).unwrap(), Verdict::NotMine);
        assert!(is_whole(synth(&text.replace("abj846", "abj847"), false)), "PV not in VG");
        assert!(is_whole(synth(&text.replace("seqno = 3", "seqno = 3 {"), false)), "parse");
        let other = text.replace("\"snapshot\"", "\"frobnicate\" x = [\"pv0\", 9]");
        assert!(is_whole(synth(&other, false)), "unknown type with extents here");
        let mut d = synth(&text, true);
        d[(MDA + 600) as usize] ^= 1; // inside the wrapped text: checksum mismatch
        assert!(is_whole(d));
        let mut d = synth(&text, false);
        d[600] ^= 1; // the label
        assert!(is_whole(d));
    }

    /// Small deterministic generator for garbage.
    fn xorshift(s: &mut u64) -> u64 {
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        *s
    }

    #[test]
    fn garbage_and_truncation_do_not_panic() {
        let text = synth_text();
        let good = synth(&text, true);
        let inner = |_: &dyn Volume| Verdict::whole("unknown", "test");
        for cut in (0..good.len()).step_by(509) {
            let _ = probe(&Mem(good[..cut].to_vec()), &inner);
        }
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..3000 {
            // Mutated text with valid checksums reaches the parser and the layout code.
            let mut t = text.clone().into_bytes();
            for _ in 0..1 + xorshift(&mut s) % 4 {
                let at = (xorshift(&mut s) % t.len() as u64) as usize;
                t[at] = b"{}[]=,\"#0123456789-pv\n "[(xorshift(&mut s) % 23) as usize];
            }
            let t = String::from_utf8_lossy(&t).into_owned();
            let _ = probe(&Mem(synth(&t, xorshift(&mut s) & 1 == 0)), &inner);
            let _ = parse(&t.as_bytes()[..(xorshift(&mut s) % t.len() as u64) as usize]);
            // Raw garbage in the headers.
            let mut d = good.clone();
            for _ in 0..1 + xorshift(&mut s) % 8 {
                let at = (xorshift(&mut s) % 4608) as usize;
                d[at] = xorshift(&mut s) as u8;
            }
            let _ = probe(&Mem(d), &inner);
        }
        for n in [u64::MAX, i64::MAX as u64, 1 << 40] {
            let t = text.replace("extent_count = 4 type", &format!("extent_count = {n} type"));
            let _ = probe(&Mem(synth(&t, false)), &synth_inner);
            let t = text.replace("pe_count = 32", &format!("pe_count = {n}"));
            let _ = probe(&Mem(synth(&t, false)), &synth_inner);
            let t = text.replace("extent_size = 8", &format!("extent_size = {n}"));
            let _ = probe(&Mem(synth(&t, false)), &synth_inner);
        }
    }

    /// Real LVM2 tools on loop devices. The kernel here has no device-mapper, so nothing is
    /// activated: LVM only writes metadata (`global/activation = 0`), LV contents are written
    /// into the image by hand where `lvs --segments` says, and read back the same way.
    mod real {
        use super::super::super::FileVolume;
        use super::*;
        use sha2::{Digest, Sha256};
        use std::path::{Path, PathBuf};
        use std::process::Command;

        fn run(cmd: &str, args: &[&str]) -> String {
            let out = Command::new(cmd)
                .args(args)
                .env("DM_DISABLE_UDEV", "1")
                .env("LVM_SUPPRESS_FD_WARNINGS", "1")
                .output()
                .unwrap_or_else(|e| panic!("{cmd}: {e}"));
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{cmd} {args:?}: {err}");
            String::from_utf8_lossy(&out.stdout).into_owned()
        }

        /// Unmounts and detaches what a test set up, even when it fails.
        #[derive(Default)]
        struct Guard {
            loops: Vec<String>,
            mounts: Vec<PathBuf>,
        }
        impl Guard {
            fn attach(&mut self, img: &Path) -> String {
                let l = run("losetup", &["-f", "--show", img.to_str().unwrap()]).trim().to_string();
                self.loops.push(l.clone());
                l
            }
            fn detach_all(&mut self) {
                for l in self.loops.drain(..) {
                    let _ = Command::new("losetup").args(["-d", &l]).status();
                }
            }
            fn unmount_all(&mut self) {
                for m in self.mounts.drain(..) {
                    let _ = Command::new("umount").arg(&m).status();
                }
            }
        }
        impl Drop for Guard {
            fn drop(&mut self) {
                self.unmount_all();
                self.detach_all();
            }
        }

        /// Runs an LVM command that sees only `devs`, touches neither the kernel nor udev, and
        /// leaves no backups, archives or hints on the host.
        fn lvm(devs: &[&str], cmd: &str, args: &[&str]) -> String {
            let accept: String = devs.iter().map(|d| format!("\"a|^{d}$|\", ")).collect();
            let cfg = format!(
                "devices {{ filter = [ {accept}\"r|.*|\" ] global_filter = [ {accept}\"r|.*|\" ] \
                 obtain_device_list_from_udev = 0 use_devicesfile = 0 hints = \"none\" }} \
                 activation {{ udev_sync = 0 udev_rules = 0 }} global {{ activation = 0 }} \
                 backup {{ backup = 0 archive = 0 }}"
            );
            let mut all = vec![cmd, "--config", &cfg];
            all.extend(args);
            run("lvm", &all)
        }

        /// `lvs --segments`: (LV, first LE, extents, [(device, first PE, last PE)]).
        type Segs = Vec<(String, u64, u64, Vec<(String, u64, u64)>)>;
        fn segments(devs: &[&str], vg: &str) -> Segs {
            let out = lvm(
                devs,
                "lvs",
                &[
                    "--noheadings",
                    "--segments",
                    "--separator",
                    ";",
                    "-o",
                    "lv_name,seg_start_pe,seg_size_pe,seg_pe_ranges",
                    vg,
                ],
            );
            let mut segs: Segs = out
                .lines()
                .filter(|l| l.contains(';'))
                .map(|l| {
                    let f: Vec<&str> = l.trim().split(';').collect();
                    let ranges = f[3].split_whitespace().map(|r| {
                        let (dev, pes) = r.rsplit_once(':').unwrap();
                        let (a, b) = pes.split_once('-').unwrap();
                        (dev.to_string(), a.parse().unwrap(), b.parse().unwrap())
                    });
                    (f[0].to_string(), f[1].parse().unwrap(), f[2].parse().unwrap(), ranges.collect())
                })
                .collect();
            segs.sort();
            segs
        }

        fn number(s: String) -> u64 {
            s.trim().parse().unwrap()
        }

        fn random(len: usize) -> Vec<u8> {
            let mut v = vec![0u8; len];
            std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut v).unwrap();
            v
        }

        fn write_at(path: &Path, data: &[u8], at: u64) {
            use std::os::unix::fs::FileExt;
            std::fs::OpenOptions::new().write(true).open(path).unwrap().write_all_at(data, at).unwrap();
        }

        /// Copies LV `name`'s bytes out of a PV image (its segments on `dev`) into `out`.
        fn assemble(segs: &Segs, name: &str, dev: &str, pv: &Path, geo: (u64, u64), out: &Path) {
            let (pe_start, ext) = geo;
            let src = std::fs::read(pv).unwrap();
            let mut lv = Vec::new();
            for (_, start, count, ranges) in segs.iter().filter(|s| s.0 == name) {
                assert_eq!((lv.len() as u64, ranges.len(), ranges[0].0.as_str()), (start * ext, 1, dev));
                let at = (pe_start + ranges[0].1 * ext) as usize;
                lv.extend_from_slice(&src[at..at + (count * ext) as usize]);
            }
            std::fs::write(out, lv).unwrap();
        }

        /// ferry's inner probe stood in for by partclone: ext4 -> the blocks partclone would
        /// copy (its domain log, "+" lines), anything else -> whole.
        fn partclone_inner(dir: &Path, v: &dyn Volume) -> Verdict {
            let mut magic = [0u8; 2];
            if v.len() < 2048 || v.read_at(&mut magic, 1080).is_err() || magic != [0x53, 0xef] {
                return Verdict::whole("unknown", "no ext4 superblock");
            }
            let (img, dom, log) = (dir.join("inner.img"), dir.join("inner.dom"), dir.join("inner.log"));
            std::fs::write(&img, read_vec(v, 0, v.len() as usize).unwrap()).unwrap();
            let s = |p: &PathBuf| p.to_str().unwrap().to_string();
            run("partclone.ext4", &["-D", "-s", &s(&img), "-o", &s(&dom), "-L", &s(&log)]);
            let mut used = RangeSet::new();
            for line in std::fs::read_to_string(&dom).unwrap().lines().filter(|l| !l.starts_with('#')) {
                let f: Vec<&str> = line.split_whitespace().collect();
                if f.len() == 3 && f[2] == "+" {
                    let hex = |x: &str| u64::from_str_radix(x.trim_start_matches("0x"), 16).unwrap();
                    used.add(hex(f[0]), hex(f[1]));
                }
            }
            Verdict::Used { fs: "ext4".into(), ranges: used.finish(v.len()), notes: vec![] }
        }

        fn sha(path: &Path) -> Vec<u8> {
            Sha256::digest(std::fs::read(path).unwrap()).to_vec()
        }

        /// A VG over two loop devices as LVM laid it out: pv1's (device, pe_start, pe_count,
        /// extent size) and the segments.
        struct Vg {
            name: String,
            devs: [String; 2],
            geo: (u64, u64, u64),
            segs: Segs,
        }

        /// pv1: `a` (8 MiB, then `b`, then 52 MiB more), `b`, part of `st` (striped over pv1 and
        /// pv2) and of `sp` (spanning both), free extents; `far` only on pv2.
        fn make_vg(g: &mut Guard, pv1: &Path, pv2: &Path) -> Vg {
            let devs = [g.attach(pv1), g.attach(pv2)];
            let (l1, l2) = (devs[0].as_str(), devs[1].as_str());
            let ds = [l1, l2];
            let vg = format!("ferrytest{}", std::process::id());
            // Two metadata areas on pv1: the second sits after the extents.
            lvm(&ds, "pvcreate", &["--pvmetadatacopies", "2", l1]);
            lvm(&ds, "pvcreate", &[l2]);
            lvm(&ds, "vgcreate", &["-s", "4M", &vg, l1, l2]);
            let lv = |args: &[&str]| lvm(&ds, args[0], &args[1..]);
            lv(&["lvcreate", "-an", "-Zn", "-L", "8M", "-n", "a", &vg, l1]);
            lv(&["lvcreate", "-an", "-Zn", "-L", "40M", "-n", "b", &vg, l1]);
            lv(&["lvextend", "-L", "+52M", &format!("{vg}/a"), l1]);
            lv(&["lvcreate", "-an", "-Zn", "-i", "2", "-L", "8M", "-n", "st", &vg, l1, l2]);
            lv(&["lvcreate", "-an", "-Zn", "-L", "8M", "-n", "sp", &vg, l2]);
            lv(&["lvextend", "-L", "+8M", &format!("{vg}/sp"), l1]);
            lv(&["lvcreate", "-an", "-Zn", "-L", "8M", "-n", "far", &vg, l2]);
            let units = ["--noheadings", "--units", "b", "--nosuffix", "-o"];
            let pv_field = |f: &str| number(lvm(&ds, "pvs", &[&units[..], &[f, l1]].concat()));
            let ext = number(lvm(&ds, "vgs", &[&units[..], &["vg_extent_size", &vg]].concat()));
            let geo = (pv_field("pe_start"), pv_field("pv_pe_count"), ext);
            let segs = segments(&ds, &vg);
            g.detach_all();
            Vg { name: vg, devs: devs.clone(), geo, segs }
        }

        /// Garbage in every extent of pv1 (as unused blocks hold), then an ext4 with `files`
        /// from `src` in LV `a`; returns that LV's bytes.
        fn fill(d: &Path, pv1: &Path, vg: &Vg, files: &[&str]) -> Vec<u8> {
            let (pe_start, pe_count, ext) = vg.geo;
            write_at(pv1, &random((pe_count * ext) as usize), pe_start);
            let src = d.join("src");
            std::fs::create_dir_all(src.join("sub/deeper")).unwrap();
            for (f, len) in files.iter().zip([100, 20 << 20, 300 << 10, 5]) {
                std::fs::write(src.join(f), random(len)).unwrap();
            }
            let a = d.join("a.img");
            std::fs::write(&a, random(60 << 20)).unwrap();
            // 1 KiB blocks: 8 MiB groups, backup superblocks and data in both segments.
            run(
                "mkfs.ext4",
                &["-q", "-F", "-b", "1024", "-E", "nodiscard", "-d", src.to_str().unwrap(), a.to_str().unwrap()],
            );
            let a_bytes = std::fs::read(&a).unwrap();
            for (_, start, count, r) in vg.segs.iter().filter(|s| s.0 == "a") {
                let lv = &a_bytes[(start * ext) as usize..((start + count) * ext) as usize];
                write_at(pv1, lv, pe_start + r[0].1 * ext);
            }
            a_bytes
        }

        /// Per extent of pv1: free ones are zeros in the copy, whole-read LVs' are intact, and
        /// `a` is mostly zeros (its ext4 is nearly empty).
        fn check_extents(vg: &Vg, orig: &[u8], copy: &[u8]) {
            let (pe_start, pe_count, ext) = vg.geo;
            let mut owner = vec![None; pe_count as usize];
            for (name, _, _, r) in &vg.segs {
                for (_, first, last) in r.iter().filter(|r| r.0 == vg.devs[0]) {
                    owner[*first as usize..=*last as usize].fill(Some(name.as_str()));
                }
            }
            let extent = |img: &[u8], pe: usize| img[(pe_start + pe as u64 * ext) as usize..][..ext as usize].to_vec();
            assert!(owner.iter().filter(|o| o.is_none()).count() > 0);
            let mut a_nonzero = 0;
            for (pe, o) in owner.iter().enumerate() {
                match o {
                    None => assert!(extent(copy, pe).iter().all(|&b| b == 0), "free extent {pe}"),
                    Some("a") => a_nonzero += extent(copy, pe).iter().filter(|&&b| b != 0).count(),
                    Some(_) => assert_eq!(extent(copy, pe), extent(orig, pe), "extent {pe}"),
                }
            }
            eprintln!("LV a: {a_nonzero} of {} bytes non-zero in the copy", 60 << 20);
            assert!(a_nonzero < (60 << 20) / 2, "LV a should be mostly zeros: {a_nonzero}");
        }

        /// Renames each PV's device in `segs` by its place in `devs`.
        fn by_place(segs: Segs, devs: &[String; 2]) -> Segs {
            let place = |d: String| devs.iter().position(|x| *x == d).map_or("?".into(), |i| format!("PV{i}"));
            let rename = |r: Vec<(String, u64, u64)>| r.into_iter().map(|(d, a, b)| (place(d), a, b)).collect();
            segs.into_iter().map(|(n, s, c, r)| (n, s, c, rename(r))).collect()
        }

        #[test]
        fn real_lvm_pv_keeps_ext4_and_drops_free_extents() {
            let have = |t: &str| Command::new("sh").args(["-c", &format!("command -v {t}")]).output();
            let tools = ["lvm", "losetup", "mkfs.ext4", "e2fsck", "partclone.ext4", "mount"];
            let root = run("id", &["-u"]).starts_with('0');
            if !root || !tools.iter().all(|t| have(t).is_ok_and(|o| o.status.success())) {
                eprintln!("skipped: needs root and {tools:?}");
                return;
            }
            let dir = tempfile::tempdir().unwrap();
            let d = dir.path();
            let (pv1, pv2) = (d.join("pv1.img"), d.join("pv2.img"));
            std::fs::File::create(&pv1).unwrap().set_len(200 << 20).unwrap();
            std::fs::File::create(&pv2).unwrap().set_len(32 << 20).unwrap();
            let mut g = Guard::default();
            let vg = make_vg(&mut g, &pv1, &pv2);
            let files = ["small.txt", "big.bin", "sub/mid.bin", "sub/deeper/x.txt"];
            let a_bytes = fill(d, &pv1, &vg, &files);

            let inner_dir = d.join("inner");
            std::fs::create_dir(&inner_dir).unwrap();
            let inner = |v: &dyn Volume| partclone_inner(&inner_dir, v);
            let verdict = probe(&FileVolume::open(&pv1).unwrap(), &inner).unwrap();
            let Verdict::Used { fs, ranges, notes } = verdict else { panic!("{verdict:?}") };
            assert_eq!(fs, "LVM2");
            eprintln!("{notes:#?}");
            let note = |lv: &str| notes.iter().find(|n| n.starts_with(&format!("{}/{lv}: ", vg.name))).cloned();
            assert_eq!(note("a").unwrap(), format!("{}/a: ext4, used blocks only", vg.name));
            assert!(note("b").unwrap().contains("read whole: unknown: no ext4 superblock"));
            assert!(note("st").unwrap().contains("read whole: striped segment of 2 stripes"));
            assert!(note("sp").unwrap().contains("read whole: has extents on another PV"));
            assert_eq!(note("far"), None);

            // The copy: zeros but for the ranges.
            let orig = std::fs::read(&pv1).unwrap();
            let mut copy = vec![0u8; orig.len()];
            for r in ranges.iter().map(|r| r.start as usize..r.end as usize) {
                copy[r.clone()].copy_from_slice(&orig[r]);
            }
            let cp = d.join("copy.img");
            std::fs::write(&cp, &copy).unwrap();
            let used: u64 = ranges.iter().map(|r| r.end - r.start).sum();
            eprintln!("{} ranges, {used} of {} bytes used", ranges.len(), orig.len());
            check_extents(&vg, &orig, &copy);

            // LVM reads the copy alike (label and both metadata areas kept), and LV `a` in it
            // passes e2fsck and holds the same files, although its free blocks are now zeros.
            let cdevs = [g.attach(&cp), g.attach(&pv2)];
            let csegs = segments(&[&cdevs[0], &cdevs[1]], &vg.name);
            assert_eq!(by_place(csegs.clone(), &cdevs), by_place(vg.segs.clone(), &vg.devs));
            lvm(&[&cdevs[0], &cdevs[1]], "vgck", &[&vg.name]);
            lvm(&[&cdevs[0], &cdevs[1]], "pvck", &[&cdevs[0]]);
            g.detach_all();
            let a_copy = d.join("a_copy.img");
            assemble(&csegs, "a", &cdevs[0], &cp, (vg.geo.0, vg.geo.2), &a_copy);
            assert_ne!(std::fs::read(&a_copy).unwrap(), a_bytes, "free blocks were zeroed");
            run("e2fsck", &["-fn", a_copy.to_str().unwrap()]);
            let mnt = d.join("mnt");
            std::fs::create_dir(&mnt).unwrap();
            run("mount", &["-o", "ro,loop,noload", a_copy.to_str().unwrap(), mnt.to_str().unwrap()]);
            g.mounts.push(mnt.clone());
            for f in files {
                assert_eq!(sha(&mnt.join(f)), sha(&d.join("src").join(f)), "{f}");
            }
            g.unmount_all();
        }

        /// Whether the committed metadata of the PV image's first metadata area wraps round
        /// the end of its circular buffer.
        fn wrapped(pv: &Path) -> bool {
            let d = std::fs::read(pv).unwrap();
            let (start, size) = (le64(&d, 512 + 104) as usize, le64(&d, 512 + 112));
            le64(&d, start + 40) + le64(&d, start + 48) > size
        }

        #[test]
        fn real_lvm_metadata_wrapped_round_its_area() {
            if !run("id", &["-u"]).starts_with('0') || Command::new("lvm").arg("version").output().is_err() {
                eprintln!("skipped: needs root and lvm");
                return;
            }
            let dir = tempfile::tempdir().unwrap();
            let pv = dir.path().join("pv.img");
            std::fs::File::create(&pv).unwrap().set_len(64 << 20).unwrap();
            let mut g = Guard::default();
            let l = g.attach(&pv);
            let vg = format!("ferrywrap{}", std::process::id());
            lvm(&[&l], "pvcreate", &[&l]);
            lvm(&[&l], "vgcreate", &["-s", "4M", &vg, &l]);
            lvm(&[&l], "lvcreate", &["-an", "-Zn", "-L", "8M", "-n", "a", &vg]);
            lvm(&[&l], "lvcreate", &["-an", "-Zn", "-L", "8M", "-n", "b", &vg]);
            lvm(&[&l], "lvextend", &["-L", "+4M", &format!("{vg}/a")]);
            // Each commit writes the whole text after the last one: big tags, added and
            // removed, walk it round the ~1 MiB area until the current copy wraps.
            let tags: Vec<String> = (0..150).map(|i| format!("t{i:03}{}", "x".repeat(1000))).collect();
            for round in 0..30 {
                let op = if round % 2 == 0 { "--addtag" } else { "--deltag" };
                let mut args: Vec<&str> = tags.iter().flat_map(|t| [op, t.as_str()]).collect();
                args.push(&vg);
                lvm(&[&l], "vgchange", &args);
                if wrapped(&pv) {
                    eprintln!("metadata wrapped after {} tag commits", round + 1);
                    break;
                }
            }
            assert!(wrapped(&pv), "metadata never wrapped");
            let segs = segments(&[&l], &vg);
            let pv_field =
                |f: &str| number(lvm(&[&l], "pvs", &["--noheadings", "--units", "b", "--nosuffix", "-o", f, &l]));
            let (pe_start, pe_count) = (pv_field("pe_start"), pv_field("pv_pe_count"));
            g.detach_all();

            // Every LV uses its first and last 100 bytes.
            let ends = |v: &dyn Volume| {
                let ranges = vec![0..100, v.len() - 100..v.len()];
                Verdict::Used { fs: "test".into(), ranges, notes: vec![] }
            };
            let len = 64 << 20;
            let Ok(Verdict::Used { ranges, notes, .. }) = probe(&FileVolume::open(&pv).unwrap(), &ends) else {
                panic!("not used")
            };
            let ext = 4 << 20;
            let mut want = RangeSet::new();
            want.add(0, pe_start);
            want.add(pe_start + pe_count * ext, len - pe_start - pe_count * ext);
            for name in ["a", "b"] {
                let mine: Vec<_> = segs.iter().filter(|s| s.0 == name).collect();
                want.add(pe_start + mine[0].3[0].1 * ext, 100);
                let last = mine.last().unwrap();
                want.add(pe_start + (last.3[0].2 + 1) * ext - 100, 100);
            }
            assert_eq!(segs.iter().filter(|s| s.0 == "a").count(), 2, "a has two segments");
            assert_eq!(ranges, want.finish(len));
            assert_eq!(
                notes[..2],
                [format!("{vg}/a: test, used blocks only"), format!("{vg}/b: test, used blocks only")]
            );
        }
    }
}
