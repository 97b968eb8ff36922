//! Loopback ports for servers a test starts: below Linux's ephemeral range (32768-60999)
//! and the fixed ports of `make chaos` (31xxx). A port picked by binding port 0 lies in the
//! ephemeral range, where the kernel may hand it to any outgoing connection between the pick
//! and the server's own bind (seen: a child scheduler's metrics port "already in use"), or
//! while a stopped server is down and about to come back on the same port.

use std::net::TcpListener;

/// Where the ports are picked.
pub const PORTS: std::ops::Range<u16> = 20_000..31_000;

/// `N` distinct free ports of [`PORTS`] (all held until all are picked).
pub fn free_ports<const N: usize>() -> anyhow::Result<[u16; N]> {
    let mut held = Vec::with_capacity(N);
    let span = u128::from(PORTS.end - PORTS.start);
    for _ in 0..N * 200 {
        if held.len() == N {
            break;
        }
        let offset = u16::try_from(uuid::Uuid::new_v4().as_u128() % span)?;
        if let Ok(l) = TcpListener::bind(("127.0.0.1", PORTS.start + offset)) {
            held.push(l);
        }
    }
    let ports = held.iter().map(|l| Ok(l.local_addr()?.port())).collect::<anyhow::Result<Vec<_>>>()?;
    <[u16; N]>::try_from(ports).map_err(|_| anyhow::anyhow!("no {N} free ports in {PORTS:?}"))
}
