//! A disk report as people read it: one line per disk, its partitions, its damage. Printed by
//! `ferry inspect` and by the live image on its screen.

use super::DiskReport;
use crate::util::human_bytes;

/// The human table.
pub fn render(disks: &[DiskReport]) -> String {
    crate::util::printable(&render_raw(disks))
}

fn render_raw(disks: &[DiskReport]) -> String {
    let mut out = String::new();
    for d in disks {
        let id = &d.identity;
        let t = &d.partition_table;
        let hw = [id.vendor.as_deref(), id.model.as_deref(), id.serial.as_deref().map(|s| s.trim())]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ");
        out += &format!(
            "{}  {}  sectors {}/{}  {}{}{}\n",
            id.path,
            human_bytes(id.size),
            id.logical_sector_size,
            id.physical_sector_size,
            format!("{:?}", t.kind).to_lowercase(),
            if hw.is_empty() { String::new() } else { format!("  {hw}") },
            if id.read_only { "  (read-only)" } else { "" },
        );
        if !t.partitions.is_empty() {
            out += &format!("  {:>3}  {:>12}  {:>10}  {:<24}  {}\n", "#", "START", "SIZE", "TYPE", "NAME");
            for p in &t.partitions {
                let ty = p.type_name.clone().unwrap_or_else(|| p.type_id.clone());
                let mut name = p.name.clone().unwrap_or_default();
                if p.bootable == Some(true) {
                    name += " (boot)";
                }
                if p.logical == Some(true) {
                    name += " (logical)";
                }
                out += &format!(
                    "  {:>3}  {:>12}  {:>10}  {:<24}  {}\n",
                    p.number,
                    p.start,
                    human_bytes(p.size),
                    ty,
                    name.trim()
                );
            }
        }
        for problem in &t.problems {
            out += &format!("  ! {problem}\n");
        }
        out += "\n";
    }
    out
}
