//! `seeder --netboot DIR`: serves the netboot system of scripts/build-netboot.sh so bare
//! machines boot into the receiver: `GET /boot.ipxe` (an iPXE script loading the kernel and
//! initramfs from this server with `blockswarm.manifest=` this seeder's manifest URL),
//! `GET /boot/vmlinuz` and `GET /boot/initrd.img` (streamed from DIR: memory stays bounded
//! whatever the number of machines booting). `seeder --print-dnsmasq-conf` prints a dnsmasq
//! configuration in proxy-DHCP mode (beside the lab's DHCP server) that chainloads Debian's
//! iPXE (`undionly.kpxe` over dnsmasq's TFTP) and hands iPXE clients this script.
//!
//! The netboot files have their own port (`--netboot-http`, 8080 by default), served by the
//! seeder's HTTP server code (`blockswarm_swarm::http`: hyper, the same limits), with the
//! files streamed.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use blockswarm_swarm::http::{self, Method, Request, Response};
use tokio::net::TcpListener;
use tracing::info;

use blockswarm_swarm::allow::AllowList;

/// The netboot options of `seeder`.
#[derive(Debug, Clone, clap::Args)]
pub struct NetbootArgs {
    /// Serve the netboot system in DIR (DIR/vmlinuz, DIR/initrd.img from
    /// scripts/build-netboot.sh): GET /boot.ipxe, /boot/vmlinuz, /boot/initrd.img.
    #[arg(long, env = "SEEDER_NETBOOT", value_name = "DIR")]
    pub netboot: Option<PathBuf>,

    /// Listen address of the netboot HTTP server.
    #[arg(long, env = "SEEDER_NETBOOT_HTTP", default_value = "0.0.0.0:8080")]
    pub netboot_http: SocketAddr,

    /// Extra kernel command line for the booted machines (e.g. "blockswarm.done=poweroff");
    /// a `console=` in it replaces the default "console=ttyS0 console=tty0" (the last console
    /// is where the init prints and runs its rescue shell: "console=ttyS0" for a serial one).
    #[arg(long, env = "SEEDER_NETBOOT_APPEND", default_value = "")]
    pub netboot_append: String,

    /// Print a dnsmasq proxy-DHCP configuration for this seeder's netboot and exit.
    #[arg(long, env = "SEEDER_PRINT_DNSMASQ_CONF")]
    pub print_dnsmasq_conf: bool,

    /// The LAN for proxy DHCP, as ADDRESS/PREFIX (default: the advertised address's /24).
    #[arg(long, env = "SEEDER_NETBOOT_SUBNET", value_name = "CIDR")]
    pub netboot_subnet: Option<String>,

    /// Directory holding Debian ipxe's undionly.kpxe, served by dnsmasq's TFTP.
    #[arg(long, env = "SEEDER_TFTP_ROOT", default_value = "/usr/lib/ipxe")]
    pub tftp_root: PathBuf,
}

/// `http://IP:PORT` (IPv6 in brackets).
pub fn base_url(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V6(_) => format!("http://[{ip}]:{port}"),
        IpAddr::V4(_) => format!("http://{ip}:{port}"),
    }
}

/// The consoles of the booted machines unless `--netboot-append` names its own: kernel
/// messages on both, and the last one (the screen) is /dev/console, where the init prints
/// the receiver's progress and errors and runs its rescue shell.
pub const DEFAULT_CONSOLES: &str = "console=ttyS0 console=tty0";

/// The iPXE script: the kernel and initramfs from `base`, the manifest URL (with the
/// deployment token) and the infohash the receiver pins on the kernel command line, then
/// [`DEFAULT_CONSOLES`] and `append`; an `append` with a `console=` word replaces the default
/// consoles (`console=ttyS0`: the init and its shell on the serial port).
pub fn ipxe_script(base: &str, manifest_url: &str, info_hash: &str, append: &str) -> String {
    let append = append.trim();
    let own_console = append.split_whitespace().any(|w| w.starts_with("console="));
    let mut extra = String::new();
    if !own_console {
        extra.push(' ');
        extra.push_str(DEFAULT_CONSOLES);
    }
    if !append.is_empty() {
        extra.push(' ');
        extra.push_str(append);
    }
    format!(
        "#!ipxe\n\
         echo blockswarm: booting the receiver for {manifest_url}\n\
         kernel {base}/boot/vmlinuz blockswarm.manifest={manifest_url} blockswarm.info-hash={info_hash}{extra}\n\
         initrd {base}/boot/initrd.img\n\
         boot\n"
    )
}

/// Network address and netmask of `cidr` ("10.0.0.5/24" -> 10.0.0.0, 255.255.255.0).
pub fn parse_subnet(cidr: &str) -> Result<(Ipv4Addr, Ipv4Addr), String> {
    let (a, p) = cidr.split_once('/').unwrap_or((cidr, "24"));
    let addr: Ipv4Addr = a
        .trim()
        .parse()
        .map_err(|_| format!("not an IPv4 subnet: {cidr:?} (example: 10.0.0.0/24)"))?;
    let prefix: u32 = p
        .trim()
        .parse()
        .ok()
        .filter(|p| (1..=32).contains(p))
        .ok_or_else(|| format!("bad prefix length in {cidr:?}"))?;
    let mask = u32::MAX << (32 - prefix);
    Ok((Ipv4Addr::from(u32::from(addr) & mask), Ipv4Addr::from(mask)))
}

/// dnsmasq in proxy-DHCP mode: the lab's DHCP server still hands out the addresses; dnsmasq
/// only adds the boot information. A PXE ROM gets Debian ipxe's undionly.kpxe over dnsmasq's
/// TFTP; iPXE (that one, or a NIC's own iPXE ROM as in QEMU) sends the user class "iPXE" and
/// gets this seeder's boot script over HTTP.
pub fn dnsmasq_conf(
    boot_ipxe: &str,
    network: Ipv4Addr,
    mask: Ipv4Addr,
    tftp_root: &Path,
) -> String {
    format!(
        "# dnsmasq: proxy DHCP for blockswarm netboot (written by seeder --print-dnsmasq-conf)\n\
         # run: dnsmasq --no-daemon --conf-file=THIS_FILE   (beside the LAN's DHCP server)\n\
         port=0\n\
         log-dhcp\n\
         dhcp-range={network},proxy,{mask}\n\
         dhcp-userclass=set:ipxe,iPXE\n\
         # BIOS PXE ROMs chainload iPXE (Debian's ipxe package) over TFTP; \".0\" is not appended\n\
         # to a file name that has an extension.\n\
         pxe-prompt=\"blockswarm\",0\n\
         pxe-service=tag:!ipxe,x86PC,\"blockswarm: iPXE\",undionly.kpxe\n\
         enable-tftp\n\
         tftp-root={}\n\
         # iPXE clients get the seeder's boot script\n\
         pxe-service=tag:ipxe,x86PC,\"blockswarm\",{boot_ipxe}\n\
         dhcp-boot=tag:ipxe,{boot_ipxe}\n",
        tftp_root.display()
    )
}

/// `--print-dnsmasq-conf`: the configuration for this seeder's address and netboot port.
pub fn print_dnsmasq_conf(args: &NetbootArgs, ip: IpAddr) -> Result<(), String> {
    let cidr = args
        .netboot_subnet
        .clone()
        .unwrap_or_else(|| format!("{ip}/24"));
    let (network, mask) = parse_subnet(&cidr)?;
    let url = format!("{}/boot.ipxe", base_url(ip, args.netboot_http.port()));
    print!("{}", dnsmasq_conf(&url, network, mask, &args.tftp_root));
    Ok(())
}

/// The files served, read from the directory at each request.
struct Served {
    dir: PathBuf,
    script: String,
}

/// Checks DIR and starts the netboot HTTP server; returns the URL of /boot.ipxe.
pub async fn start(
    args: &NetbootArgs,
    dir: &Path,
    ip: IpAddr,
    manifest_url: &str,
    info_hash: &str,
    allow: AllowList,
) -> Result<String, String> {
    for f in ["vmlinuz", "initrd.img"] {
        let p = dir.join(f);
        if !p.is_file() {
            return Err(format!(
                "--netboot {}: no {f} (build it with scripts/build-netboot.sh {})",
                dir.display(),
                dir.display()
            ));
        }
    }
    let listener = TcpListener::bind(args.netboot_http)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.netboot_http))?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let base = base_url(ip, port);
    let served = Arc::new(Served {
        dir: dir.to_path_buf(),
        script: ipxe_script(&base, manifest_url, info_hash, &args.netboot_append),
    });
    // The seeder's HTTP server (its limits, `--allow`), with the netboot routes.
    tokio::spawn(http::serve_only(
        listener,
        allow,
        Arc::new(move |r: Request| {
            let resp = route(&served, &r);
            async move { resp }
        }),
    ));
    let url = format!("{base}/boot.ipxe");
    info!(%url, "netboot ready");
    Ok(url)
}

/// The netboot routes. GET and HEAD (hyper sends HEAD no body); the kernel and initramfs
/// are streamed from DIR, read at each request.
fn route(served: &Served, r: &Request) -> Response {
    if r.method == Method::Post {
        return Response::error(405, "method not allowed");
    }
    let file = |f: &str| Response::file("application/octet-stream", served.dir.join(f));
    match r.path.as_str() {
        "/boot.ipxe" => Response::ok("text/plain", served.script.clone()),
        "/boot/vmlinuz" => file("vmlinuz"),
        "/boot/initrd.img" => file("initrd.img"),
        _ => Response::error(
            404,
            "not found: GET /boot.ipxe, /boot/vmlinuz, /boot/initrd.img",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ipxe_script() {
        let s = ipxe_script(
            "http://10.0.0.5:8080",
            "http://10.0.0.5:6880/t/00ff/sda.packed.torrent",
            "abcd",
            "",
        );
        assert!(s.starts_with("#!ipxe\n"));
        assert!(s.contains(
            "\nkernel http://10.0.0.5:8080/boot/vmlinuz \
             blockswarm.manifest=http://10.0.0.5:6880/t/00ff/sda.packed.torrent \
             blockswarm.info-hash=abcd console=ttyS0 console=tty0\n"
        ));
        assert!(s.contains("\ninitrd http://10.0.0.5:8080/boot/initrd.img\n"));
        assert!(s.ends_with("\nboot\n"));
        let s = ipxe_script(
            "http://h:1",
            "http://h:2/x.torrent",
            "ab",
            " blockswarm.done=poweroff ",
        );
        assert!(s.contains("console=tty0 blockswarm.done=poweroff\n"));
        // A console= of its own replaces the default consoles (the last one is /dev/console).
        let s = ipxe_script(
            "http://h:1",
            "http://h:2/x.torrent",
            "ab",
            "console=ttyS0 quiet",
        );
        assert!(
            s.contains("blockswarm.manifest=http://h:2/x.torrent blockswarm.info-hash=ab console=ttyS0 quiet\n"),
            "{s}"
        );
        assert!(!s.contains("tty0"), "{s}");
    }

    #[test]
    fn subnets() {
        assert_eq!(
            parse_subnet("10.0.0.5/24").unwrap(),
            (Ipv4Addr::new(10, 0, 0, 0), Ipv4Addr::new(255, 255, 255, 0))
        );
        assert_eq!(
            parse_subnet("172.16.9.1/20").unwrap(),
            (
                Ipv4Addr::new(172, 16, 0, 0),
                Ipv4Addr::new(255, 255, 240, 0)
            )
        );
        assert!(parse_subnet("10.0.0.0/33").is_err());
        assert!(parse_subnet("lab").is_err());
    }

    #[test]
    fn the_dnsmasq_conf() {
        let c = dnsmasq_conf(
            "http://10.0.0.5:8080/boot.ipxe",
            Ipv4Addr::new(10, 0, 0, 0),
            Ipv4Addr::new(255, 255, 255, 0),
            Path::new("/usr/lib/ipxe"),
        );
        let lines: Vec<&str> = c.lines().collect();
        for want in [
            "port=0",
            "dhcp-range=10.0.0.0,proxy,255.255.255.0",
            "dhcp-userclass=set:ipxe,iPXE",
            "pxe-service=tag:!ipxe,x86PC,\"blockswarm: iPXE\",undionly.kpxe",
            "enable-tftp",
            "tftp-root=/usr/lib/ipxe",
            "pxe-service=tag:ipxe,x86PC,\"blockswarm\",http://10.0.0.5:8080/boot.ipxe",
            "dhcp-boot=tag:ipxe,http://10.0.0.5:8080/boot.ipxe",
        ] {
            assert!(lines.contains(&want), "missing {want:?} in:\n{c}");
        }
        // No full DHCP server: every dhcp-range is a proxy range.
        assert!(lines
            .iter()
            .filter(|l| l.starts_with("dhcp-range="))
            .all(|l| l.contains(",proxy")));
    }
}
