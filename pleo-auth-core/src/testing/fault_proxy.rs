//! A TCP proxy on loopback that injects network faults between a client and a real server.
//!
//! Toxiproxy does not install here and `tc netem` does not work, so the reliability tests put
//! this proxy between our code and the sandbox, OpenBao, moto or Redis.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What the proxy does to connections accepted from now on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyFault {
    /// Forward bytes unchanged.
    None,
    /// Wait this long before forwarding each chunk, in both directions.
    Delay(Duration),
    /// Accept the connection and never forward or answer anything.
    Stall,
    /// Forward this many bytes from the server, then close both sides.
    DropAfter(usize),
    /// Reset the connection (RST, linger 0) as soon as it is accepted.
    Reset,
}

#[derive(Debug)]
struct Control {
    fault: Mutex<ProxyFault>,
    connections: AtomicU64,
}

/// A running fault proxy. Stops when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    control: Arc<Control>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on `127.0.0.1:0` and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let control = Arc::new(Control {
            fault: Mutex::new(ProxyFault::None),
            connections: AtomicU64::new(0),
        });
        let task_control = control.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                task_control.connections.fetch_add(1, Ordering::Relaxed);
                let fault = *task_control.fault.lock().expect("proxy lock");
                tokio::spawn(handle(client, upstream, fault));
            }
        });
        Ok(Self {
            addr,
            control,
            task,
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets the fault for connections accepted from now on.
    pub fn set_fault(&self, fault: ProxyFault) {
        *self.control.fault.lock().expect("proxy lock") = fault;
    }

    /// How many connections the proxy has accepted.
    pub fn connections(&self) -> u64 {
        self.control.connections.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Resets the connection: linger 0 makes close send RST. A zero linger never blocks on drop,
/// which is what tokio's deprecation of `set_linger` warns about.
#[allow(deprecated)]
fn reset(client: TcpStream) {
    let _ = client.set_linger(Some(Duration::ZERO));
    drop(client);
}

async fn handle(client: TcpStream, upstream: SocketAddr, fault: ProxyFault) {
    match fault {
        ProxyFault::Reset => reset(client),
        ProxyFault::Stall => {
            let mut client = client;
            let mut sink = [0u8; 4096];
            while matches!(client.read(&mut sink).await, Ok(n) if n > 0) {}
        }
        ProxyFault::None | ProxyFault::Delay(_) | ProxyFault::DropAfter(_) => {
            let Ok(server) = TcpStream::connect(upstream).await else {
                reset(client);
                return;
            };
            let delay = match fault {
                ProxyFault::Delay(d) => Some(d),
                _ => None,
            };
            let limit = match fault {
                ProxyFault::DropAfter(n) => Some(n),
                _ => None,
            };
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            let up = tokio::spawn(pump(client_read, server_write, delay, None));
            pump(server_read, client_write, delay, limit).await;
            up.abort();
        }
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Option<Duration>,
    limit: Option<usize>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut sent = 0usize;
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        let n = match limit {
            Some(max) if sent + n >= max => {
                let _ = to.write_all(&buf[..max - sent]).await;
                break;
            }
            _ => n,
        };
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        sent += n;
    }
    let _ = to.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn round_trip(proxy: &FaultProxy, msg: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut s = TcpStream::connect(proxy.addr()).await?;
        s.write_all(msg).await?;
        let mut out = vec![0u8; msg.len()];
        let mut got = 0;
        while got < out.len() {
            let n = s.read(&mut out[got..]).await?;
            if n == 0 {
                break;
            }
            got += n;
        }
        out.truncate(got);
        Ok(out)
    }

    #[tokio::test]
    async fn forwards_then_injects_each_fault() {
        let proxy = FaultProxy::start(echo_server().await).await.unwrap();
        assert_eq!(round_trip(&proxy, b"hello").await.unwrap(), b"hello");

        proxy.set_fault(ProxyFault::DropAfter(3));
        assert_eq!(round_trip(&proxy, b"hello").await.unwrap(), b"hel");

        proxy.set_fault(ProxyFault::Reset);
        let reset = round_trip(&proxy, b"hello").await;
        assert!(
            reset.map(|v| v.is_empty()).unwrap_or(true),
            "reset delivers nothing"
        );

        proxy.set_fault(ProxyFault::Stall);
        let stalled =
            tokio::time::timeout(Duration::from_millis(200), round_trip(&proxy, b"x")).await;
        assert!(stalled.is_err(), "a stalled connection never answers");

        proxy.set_fault(ProxyFault::Delay(Duration::from_millis(20)));
        assert_eq!(round_trip(&proxy, b"late").await.unwrap(), b"late");
        assert_eq!(proxy.connections(), 5);
    }
}
