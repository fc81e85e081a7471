//! `ferry image build`: the live image.

use anyhow::Result;

use crate::cmdline::ImageBuildArgs;
use crate::util::human_bytes;

pub fn run(a: ImageBuildArgs) -> Result<i32> {
    let opts = crate::imagebuild::BuildOptions {
        out: a.out.clone(),
        init: a.init.clone(),
        kernel_deb: a.kernel_deb.clone(),
        cache: a.cache.clone(),
        cmdline: a.cmdline.clone(),
        no_usb: a.no_usb,
    };
    let out = crate::imagebuild::build(&opts)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("kernel {}: {} ({})", out.kernel_version, out.kernel.display(), human_bytes(out.kernel_bytes));
        println!("initrd: {} ({}, {} modules)", out.initrd.display(), human_bytes(out.initrd_bytes), out.modules);
        println!("iPXE:   {} (serve it with vmlinuz and initrd.img next to it)", out.ipxe.display());
        if let Some(usb) = &out.usb {
            println!(
                "USB:    {} ({}; write with bmaptool copy or dd)",
                usb.display(),
                human_bytes(out.usb_bytes.unwrap_or(0))
            );
        }
        if !out.missing_modules.is_empty() {
            println!("missing modules (not in this kernel): {}", out.missing_modules.join(" "));
        }
        println!("built in {:.1} s", out.seconds);
    }
    Ok(0)
}
