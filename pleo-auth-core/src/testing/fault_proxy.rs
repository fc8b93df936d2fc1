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
use tokio::task::{AbortHandle, JoinHandle};

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
    /// The task of every connection accepted so far (finished ones are pruned on accept).
    open: Mutex<Vec<AbortHandle>>,
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
            open: Mutex::new(Vec::new()),
        });
        let task_control = control.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                task_control.connections.fetch_add(1, Ordering::Relaxed);
                let fault = *task_control.fault.lock().expect("proxy lock");
                let task = tokio::spawn(handle(client, upstream, fault));
                let mut open = task_control.open.lock().expect("proxy lock");
                open.retain(|t| !t.is_finished());
                open.push(task.abort_handle());
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

    /// Closes every connection open now, on both sides, so that clients with pooled or
    /// multiplexed connections reconnect and meet the current fault. Returns how many were open.
    pub fn close_all(&self) -> usize {
        let open = std::mem::take(&mut *self.control.open.lock().expect("proxy lock"));
        let live = open.iter().filter(|t| !t.is_finished()).count();
        for task in open {
            task.abort();
        }
        live
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
            // Both directions run in this task, so aborting it closes the connection. The
            // connection ends when the server side does; the client side closing its half only
            // ends the upstream direction.
            let up = async {
                pump(client_read, server_write, delay, None).await;
                std::future::pending::<()>().await
            };
            tokio::select! {
                () = pump(server_read, client_write, delay, limit) => {}
                () = up => {}
            }
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

    #[tokio::test]
    async fn close_all_cuts_open_connections_and_clients_meet_the_new_fault() {
        let proxy = FaultProxy::start(echo_server().await).await.unwrap();
        let mut open = TcpStream::connect(proxy.addr()).await.unwrap();
        open.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        open.read_exact(&mut buf).await.unwrap();
        proxy.set_fault(ProxyFault::Stall);
        assert_eq!(proxy.close_all(), 1);
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(2), open.read_to_end(&mut rest))
            .await
            .expect("the open connection is closed");
        assert!(closed.map(|n| n == 0).unwrap_or(true));
        let stalled =
            tokio::time::timeout(Duration::from_millis(200), round_trip(&proxy, b"x")).await;
        assert!(stalled.is_err(), "a new connection meets the stall");
        assert_eq!(proxy.close_all(), 1, "the stalled connection is cut too");
    }
}
