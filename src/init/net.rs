//! Bringing up the network in the live image: links up over netlink, DHCPv4 on every link with
//! carrier (the PXE NIC first; the first lease wins) or the static `ip=` form, then the address,
//! the default route and resolv.conf. Wrapped here so the rest of ferry never sees rtnetlink's
//! builder API, which moves between versions.

use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::cmdline::IpConfig;

/// A network interface as sysfs shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub index: u32,
    pub mac: String,
}

/// The address a link ended up with.
#[derive(Clone, Debug)]
pub struct Configured {
    pub link: String,
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    pub how: &'static str,
}

use crate::fsx::read_trimmed as read;

/// Every interface but loopback, sorted by name.
pub fn links(sys_class_net: &Path) -> Vec<Link> {
    let Ok(rd) = fs::read_dir(sys_class_net) else { return vec![] };
    let mut out: Vec<Link> = rd
        .flatten()
        .filter(|e| e.file_name() != "lo")
        .filter_map(|e| {
            let p = e.path();
            Some(Link {
                name: e.file_name().to_string_lossy().into_owned(),
                index: read(&p.join("ifindex"))?.parse().ok()?,
                mac: read(&p.join("address")).unwrap_or_default().to_lowercase(),
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn has_carrier(name: &str) -> bool {
    read(&Path::new("/sys/class/net").join(name).join("carrier")).as_deref() == Some("1")
}

/// Brings the network up; `bootif` (a MAC) is tried first. Fails naming every link it tried.
pub async fn bring_up(ip: &IpConfig, bootif: Option<&str>, timeout: Duration) -> Result<Configured> {
    let (conn, handle, _) = rtnetlink::new_connection().context("opening a netlink socket")?;
    tokio::spawn(conn);
    let mut all = links(Path::new("/sys/class/net"));
    if all.is_empty() {
        bail!("no network interface found: the image may lack the driver for this NIC (see the driver report)");
    }
    if let Some(mac) = bootif {
        all.sort_by_key(|l| l.mac != mac);
    }
    log::debug!("links: {}", names(&all));
    for l in &all {
        let msg = rtnetlink::LinkUnspec::new_with_index(l.index).up().build();
        if let Err(e) = handle.link().set(msg).execute().await {
            log::warn!("setting {} up: {e}", l.name);
        }
    }
    let lo = links_lo_index();
    if let Some(lo) = lo {
        let _ = handle.link().set(rtnetlink::LinkUnspec::new_with_index(lo).up().build()).execute().await;
    }
    log::debug!("links are up");
    let deadline = Instant::now() + timeout;
    match ip {
        IpConfig::Static { client, gateway, prefix, hostname, iface } => {
            let link = match iface {
                Some(name) => all
                    .iter()
                    .find(|l| &l.name == name)
                    .with_context(|| format!("ip= names interface {name}, but this machine has {}", names(&all)))?,
                None => {
                    wait_for_carrier(&all, deadline).await;
                    all.iter().find(|l| has_carrier(&l.name)).unwrap_or(&all[0])
                }
            };
            apply(&handle, link, *client, *prefix, *gateway, &[]).await?;
            if let Some(h) = hostname {
                let _ = nix::unistd::sethostname(h);
            }
            Ok(Configured {
                link: link.name.clone(),
                address: *client,
                prefix: *prefix,
                gateway: *gateway,
                how: "static",
            })
        }
        IpConfig::Dhcp => dhcp_any(&handle, &all, deadline).await,
    }
}

/// DHCP on every link with carrier at once; the first lease wins.
async fn dhcp_any(handle: &rtnetlink::Handle, all: &[Link], deadline: Instant) -> Result<Configured> {
    wait_for_carrier(all, deadline).await;
    log::debug!("carrier: {:?}", all.iter().map(|l| (l.name.as_str(), has_carrier(&l.name))).collect::<Vec<_>>());
    let with_carrier: Vec<&Link> = all.iter().filter(|l| has_carrier(&l.name)).collect();
    if with_carrier.is_empty() {
        bail!("no link has carrier (tried {}): check the cable and the switch port", names(all));
    }
    let mut tasks = tokio::task::JoinSet::new();
    for l in &with_carrier {
        let l = (*l).clone();
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(5));
        tasks.spawn(async move {
            let lease = tokio::time::timeout(left, dhcp(&l)).await;
            (l, lease)
        });
    }
    let mut why = vec![];
    while let Some(done) = tasks.join_next().await {
        let Ok((link, lease)) = done else { continue };
        match lease {
            Ok(Ok(lease)) => {
                tasks.abort_all();
                let prefix = lease.prefix_length();
                let gw = lease.gateways.as_ref().and_then(|g| g.first().copied());
                let dns = lease.dns_srvs.clone().unwrap_or_default();
                apply(handle, &link, lease.yiaddr, prefix, gw, &dns).await?;
                return Ok(Configured { link: link.name, address: lease.yiaddr, prefix, gateway: gw, how: "dhcp" });
            }
            Ok(Err(e)) => why.push(format!("{}: {e:#}", link.name)),
            Err(_) => why.push(format!("{}: no DHCP answer", link.name)),
        }
    }
    bail!("DHCP failed on every link with carrier ({})", why.join("; "))
}

fn links_lo_index() -> Option<u32> {
    read(Path::new("/sys/class/net/lo/ifindex"))?.parse().ok()
}

fn names(links: &[Link]) -> String {
    links.iter().map(|l| format!("{} ({})", l.name, l.mac)).collect::<Vec<_>>().join(", ")
}

async fn wait_for_carrier(all: &[Link], deadline: Instant) {
    // Links report carrier a moment after going up (about 2 s for an e1000 in QEMU).
    while Instant::now() < deadline && !all.iter().any(|l| has_carrier(&l.name)) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Give the other links a short grace period too.
    let grace = Instant::now() + Duration::from_millis(300);
    while Instant::now() < grace.min(deadline) && !all.iter().all(|l| has_carrier(&l.name)) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn dhcp(link: &Link) -> Result<mozim::DhcpV4Lease> {
    let mut cfg = mozim::DhcpV4Config::new(&link.name);
    cfg.set_iface_index(link.index);
    cfg.set_iface_mac(&link.mac).map_err(|e| anyhow::anyhow!("{e}"))?;
    cfg.set_timeout_sec(60);
    let mut client = mozim::DhcpV4Client::init(cfg, None).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    log::debug!("DHCP client started on {}", link.name);
    loop {
        match client.run().await {
            Ok(mozim::DhcpV4State::Done(lease)) => return Ok(*lease),
            Ok(state) => log::debug!("DHCP on {}: {state}", link.name),
            Err(e) => {
                log::debug!("DHCP on {}: {e}", link.name);
                client.clean_up();
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

async fn apply(
    handle: &rtnetlink::Handle,
    link: &Link,
    addr: Ipv4Addr,
    prefix: u8,
    gateway: Option<Ipv4Addr>,
    dns: &[Ipv4Addr],
) -> Result<()> {
    handle
        .address()
        .add(link.index, IpAddr::V4(addr), prefix)
        .execute()
        .await
        .with_context(|| format!("adding {addr}/{prefix} to {}", link.name))?;
    if let Some(gw) = gateway {
        let route = rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new().gateway(gw).build();
        handle.route().add(route).execute().await.with_context(|| format!("adding the default route via {gw}"))?;
    }
    if !dns.is_empty() {
        let text: String = dns.iter().map(|d| format!("nameserver {d}\n")).collect();
        let _ = fs::create_dir_all("/etc");
        let _ = fs::write("/etc/resolv.conf", text);
    }
    Ok(())
}
