//! rust-server: an ordinary Rust program using only the standard library (no crates), built with
//! Debian's rustc 1.63 for wasm32-wasi. A key/value store speaking the same RESP subset as the C
//! server (guests/c-server), so redis-cli and ftvm's RESP clients talk to it.
//!
//! The runtime hands it a pre-opened listening socket, as wasmtime's `--tcplisten` and wazero's
//! `--listen` do; its descriptor comes from the environment (FTVM_LISTEN_FD, else LISTEN_FD, else 3)
//! and std takes it over with `TcpListener::from_raw_fd`. std accepts with `sock_accept` and reads
//! and writes streams with `fd_read`/`fd_write`. Every socket is non-blocking; the one loop waits in
//! WASI's `poll_oneoff` (std has no poll, so it is declared here as the WASI import it is).
//!
//! Commands: PING [msg], ECHO msg, GET k, SET k v, MGET k [k ...], DEL k [k ...], INCR k,
//! EXISTS k [k ...], DBSIZE, QUIT, COMMAND (-> *0); anything else -> -ERR. Input: RESP arrays of
//! bulk strings and inline commands; pipelined and split input both work. At most 1 MiB of unparsed
//! input per connection (then the connection is closed).
//!
//! Build: rustc --target wasm32-wasi -O -o rust_server.wasm server.rs

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::wasi::io::{AsRawFd, FromRawFd};

const MAX_INPUT_BYTES: usize = 1 << 20;
const MAX_CLIENTS: usize = 1000;

#[repr(C)]
#[derive(Clone, Copy)]
struct Subscription {
    userdata: u64,
    tag: u8,
    _pad: [u8; 7],
    // fd_read/fd_write: the fd in the first 4 bytes; clock: id, timeout, precision, flags.
    u: [u64; 4],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Event {
    userdata: u64,
    error: u16,
    kind: u8,
    _pad: [u8; 5],
    nbytes: u64,
    flags: u16,
    _pad2: [u8; 6],
}

#[link(wasm_import_module = "wasi_snapshot_preview1")]
extern "C" {
    fn poll_oneoff(subs: *const Subscription, events: *mut Event, n: usize, nevents: *mut usize) -> u16;
}

const EVENTTYPE_FD_READ: u8 = 1;
const EVENTTYPE_FD_WRITE: u8 = 2;
const LISTENER: u64 = u64::MAX;

struct Client {
    stream: TcpStream,
    input: Vec<u8>,
    output: Vec<u8>,
    eof: bool,
    quit: bool,
}

enum Parse {
    Incomplete,
    Bad,
    Command(Vec<Vec<u8>>, usize),
}

fn find_crlf(b: &[u8], from: usize) -> Option<usize> {
    (from..b.len().saturating_sub(1)).find(|&i| b[i] == b'\r' && b[i + 1] == b'\n')
}

fn parse_int(b: &[u8]) -> Option<i64> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// One command from the front of `b`: a RESP array of bulk strings, or an inline command.
fn parse(b: &[u8]) -> Parse {
    if b.is_empty() {
        return Parse::Incomplete;
    }
    if b[0] != b'*' {
        let end = match b.iter().position(|&c| c == b'\n') {
            Some(e) => e,
            None => return Parse::Incomplete,
        };
        let line = &b[..end];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let args = line.split(|c| *c == b' ' || *c == b'\t').filter(|a| !a.is_empty()).map(|a| a.to_vec()).collect();
        return Parse::Command(args, end + 1);
    }
    let e = match find_crlf(b, 1) {
        Some(e) => e,
        None => return Parse::Incomplete,
    };
    let n = match parse_int(&b[1..e]) {
        Some(n) if (0..=1_000_000).contains(&n) => n as usize,
        _ => return Parse::Bad,
    };
    let mut at = e + 2;
    let mut args = Vec::with_capacity(n);
    for _ in 0..n {
        if at >= b.len() {
            return Parse::Incomplete;
        }
        if b[at] != b'$' {
            return Parse::Bad;
        }
        let e = match find_crlf(b, at + 1) {
            Some(e) => e,
            None => return Parse::Incomplete,
        };
        let len = match parse_int(&b[at + 1..e]) {
            Some(l) if (0..=MAX_INPUT_BYTES as i64).contains(&l) => l as usize,
            _ => return Parse::Bad,
        };
        let start = e + 2;
        if b.len() < start + len + 2 {
            return Parse::Incomplete;
        }
        args.push(b[start..start + len].to_vec());
        at = start + len + 2;
    }
    Parse::Command(args, at)
}

fn bulk(o: &mut Vec<u8>, v: &[u8]) {
    o.extend_from_slice(format!("${}\r\n", v.len()).as_bytes());
    o.extend_from_slice(v);
    o.extend_from_slice(b"\r\n");
}

fn int(o: &mut Vec<u8>, prefix: char, v: i64) {
    o.extend_from_slice(format!("{}{}\r\n", prefix, v).as_bytes());
}

fn execute(store: &mut BTreeMap<Vec<u8>, Vec<u8>>, c: &mut Client, args: Vec<Vec<u8>>) {
    if args.is_empty() {
        return;
    }
    let o = &mut c.output;
    let cmd = String::from_utf8_lossy(&args[0]).to_ascii_uppercase();
    let argc = args.len();
    match (cmd.as_str(), argc) {
        ("PING", 1) => o.extend_from_slice(b"+PONG\r\n"),
        ("PING", _) | ("ECHO", 2) => bulk(o, &args[1]),
        ("SET", n) if n >= 3 => {
            store.insert(args[1].clone(), args[2].clone());
            o.extend_from_slice(b"+OK\r\n");
        }
        ("GET", 2) => match store.get(&args[1]) {
            Some(v) => bulk(o, v),
            None => o.extend_from_slice(b"$-1\r\n"),
        },
        ("MGET", n) if n >= 2 => {
            int(o, '*', (n - 1) as i64);
            for k in &args[1..] {
                match store.get(k) {
                    Some(v) => bulk(o, v),
                    None => o.extend_from_slice(b"$-1\r\n"),
                }
            }
        }
        ("DEL", n) if n >= 2 => {
            let removed = args[1..].iter().filter(|k| store.remove(*k).is_some()).count();
            int(o, ':', removed as i64);
        }
        ("EXISTS", n) if n >= 2 => {
            let found = args[1..].iter().filter(|k| store.contains_key(*k)).count();
            int(o, ':', found as i64);
        }
        ("INCR", 2) => {
            let current = match store.get(&args[1]) {
                None => Some(0),
                Some(v) => parse_int(v),
            };
            match current.and_then(|v| v.checked_add(1)) {
                Some(v) => {
                    store.insert(args[1].clone(), v.to_string().into_bytes());
                    int(o, ':', v);
                }
                None => o.extend_from_slice(b"-ERR value is not an integer or out of range\r\n"),
            }
        }
        ("DBSIZE", _) => int(o, ':', store.len() as i64),
        ("COMMAND", _) => o.extend_from_slice(b"*0\r\n"),
        ("QUIT", _) => {
            o.extend_from_slice(b"+OK\r\n");
            c.quit = true;
        }
        _ => o.extend_from_slice(b"-ERR unknown command or wrong number of arguments\r\n"),
    }
}

/// Runs every complete command in the client's input. False: the client is to be dropped.
fn serve_input(store: &mut BTreeMap<Vec<u8>, Vec<u8>>, c: &mut Client) -> bool {
    loop {
        if c.quit {
            c.input.clear();
            return true;
        }
        match parse(&c.input) {
            Parse::Incomplete => return c.input.len() <= MAX_INPUT_BYTES,
            Parse::Bad => {
                c.output.extend_from_slice(b"-ERR Protocol error\r\n");
                c.quit = true;
                c.input.clear();
                return true;
            }
            Parse::Command(args, used) => {
                c.input.drain(..used);
                execute(store, c, args);
            }
        }
    }
}

/// Reads what is there. False on a broken connection.
fn read_some(c: &mut Client) -> bool {
    let mut buf = [0u8; 16384];
    loop {
        match c.stream.read(&mut buf) {
            Ok(0) => {
                c.eof = true;
                return true;
            }
            Ok(n) => {
                c.input.extend_from_slice(&buf[..n]);
                if c.input.len() > MAX_INPUT_BYTES {
                    return true;
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
}

/// Writes what it can. False on a broken connection.
fn write_some(c: &mut Client) -> bool {
    while !c.output.is_empty() {
        match c.stream.write(&c.output) {
            Ok(0) => return false,
            Ok(n) => {
                c.output.drain(..n);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
    true
}

fn listen_fd() -> i32 {
    for name in ["FTVM_LISTEN_FD", "LISTEN_FD"] {
        if let Some(fd) = std::env::var(name).ok().and_then(|v| v.parse::<i32>().ok()) {
            return fd;
        }
    }
    3
}

fn main() {
    let fd = listen_fd();
    // SAFETY: the runtime pre-opened this descriptor as a listening socket for us.
    let listener = unsafe { TcpListener::from_raw_fd(fd as _) };
    if let Err(e) = listener.set_nonblocking(true) {
        eprintln!("rust-server: cannot make the listener (fd {}) non-blocking: {}", fd, e);
        std::process::exit(1);
    }
    eprintln!("rust-server: serving on fd {}", fd);
    let mut store: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let mut clients: Vec<Option<Client>> = Vec::new();
    let mut subs: Vec<Subscription> = Vec::new();
    let mut events: Vec<Event> = Vec::new();
    let blank_event = Event { userdata: 0, error: 0, kind: 0, _pad: [0; 5], nbytes: 0, flags: 0, _pad2: [0; 6] };
    loop {
        subs.clear();
        let live = clients.iter().filter(|c| c.is_some()).count();
        if live < MAX_CLIENTS {
            subs.push(Subscription { userdata: LISTENER, tag: EVENTTYPE_FD_READ, _pad: [0; 7], u: [listener.as_raw_fd() as u64, 0, 0, 0] });
        }
        for (i, c) in clients.iter().enumerate() {
            if let Some(c) = c {
                let raw = c.stream.as_raw_fd() as u64;
                if !c.output.is_empty() {
                    subs.push(Subscription { userdata: i as u64, tag: EVENTTYPE_FD_WRITE, _pad: [0; 7], u: [raw, 0, 0, 0] });
                } else if !c.eof {
                    subs.push(Subscription { userdata: i as u64, tag: EVENTTYPE_FD_READ, _pad: [0; 7], u: [raw, 0, 0, 0] });
                }
            }
        }
        events.clear();
        events.resize(subs.len(), blank_event);
        let mut n: usize = 0;
        // SAFETY: both arrays hold subs.len() elements with WASI preview1's layouts.
        let err = unsafe { poll_oneoff(subs.as_ptr(), events.as_mut_ptr(), subs.len(), &mut n) };
        if err != 0 {
            eprintln!("rust-server: poll_oneoff failed with errno {}", err);
            std::process::exit(1);
        }
        for ev in &events[..n] {
            if ev.userdata == LISTENER {
                loop {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            if stream.set_nonblocking(true).is_err() {
                                continue;
                            }
                            let c = Client { stream, input: Vec::new(), output: Vec::new(), eof: false, quit: false };
                            match clients.iter().position(|c| c.is_none()) {
                                Some(free) => clients[free] = Some(c),
                                None => clients.push(Some(c)),
                            }
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                        Err(e) => {
                            eprintln!("rust-server: accept failed: {}", e);
                            break;
                        }
                    }
                }
                continue;
            }
            let i = ev.userdata as usize;
            let keep = match clients.get_mut(i).and_then(|c| c.as_mut()) {
                None => continue,
                Some(c) => {
                    let mut ok = true;
                    if ev.kind == EVENTTYPE_FD_READ {
                        ok = read_some(c) && serve_input(&mut store, c);
                    }
                    ok = ok && write_some(c);
                    ok && !(c.output.is_empty() && (c.quit || c.eof))
                }
            };
            if !keep {
                clients[i] = None; // dropping the stream closes it (fd_close)
            }
        }
    }
}
