//! Several owned buffers written with one `writev`: a response head and a body that lives
//! in another allocation (a Python `bytes` object), plus coalesced responses before them.

use bytes::{Buf, Bytes};
use monoio::buf::IoVecBuf;

/// Buffers and their `iovec`s, owned together for the whole write: io_uring may still read
/// them after the future that started the write is gone, so the runtime owns this value
/// until the kernel is done.
pub(super) struct Gather {
    bufs: Vec<Bytes>,
    iovecs: Vec<libc::iovec>,
}

impl Gather {
    pub(super) fn new(bufs: Vec<Bytes>) -> Gather {
        let bufs: Vec<Bytes> = bufs.into_iter().filter(|b| !b.is_empty()).collect();
        let iovecs = bufs
            .iter()
            .map(|b| libc::iovec {
                iov_base: b.as_ptr().cast_mut().cast(),
                iov_len: b.len(),
            })
            .collect();
        Gather { bufs, iovecs }
    }

    pub(super) fn remaining(&self) -> usize {
        self.bufs.iter().map(Bytes::len).sum()
    }

    /// What is left after `n` more bytes were written.
    pub(super) fn advance(self, mut n: usize) -> Gather {
        let mut bufs = self.bufs;
        let mut first = 0;
        while n > 0 && first < bufs.len() {
            let take = n.min(bufs[first].len());
            bufs[first].advance(take);
            n -= take;
            if bufs[first].is_empty() {
                first += 1;
            }
        }
        bufs.drain(..first);
        Gather::new(bufs)
    }
}

// SAFETY: each iovec points at the data of the `Bytes` at the same index, which `self` owns
// and never mutates or moves (a `Bytes`' data does not move when the handle does), and the
// `iovecs` vector is not touched while the runtime owns the value; so the pointer and the
// count stay valid for as long as the kernel may read them.
unsafe impl IoVecBuf for Gather {
    fn read_iovec_ptr(&self) -> *const libc::iovec {
        self.iovecs.as_ptr()
    }

    fn read_iovec_len(&self) -> usize {
        self.iovecs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advance_across_buffers() {
        let g = Gather::new(vec![
            Bytes::from_static(b"head"),
            Bytes::new(),
            Bytes::from_static(b"body!"),
        ]);
        assert_eq!(g.remaining(), 9);
        assert_eq!(g.read_iovec_len(), 2);
        let g = g.advance(2);
        assert_eq!(g.remaining(), 7);
        assert_eq!(&g.bufs[0][..], b"ad");
        let g = g.advance(3);
        assert_eq!(g.read_iovec_len(), 1);
        assert_eq!(&g.bufs[0][..], b"ody!");
        assert_eq!(g.advance(4).remaining(), 0);
    }

    /// What the kernel reads: every iovec, followed through its raw pointer, is exactly the
    /// rest of its buffer, after each partial write too (`Gather::advance` builds new
    /// iovecs for the buffers it keeps). Under Miri (scripts/miri.sh) this also proves the
    /// pointers live and in bounds: the invariant the `unsafe impl IoVecBuf` rests on.
    #[test]
    fn iovecs_point_at_the_unwritten_bytes() {
        let body = Bytes::from(vec![7u8; 100]);
        let mut g = Gather::new(vec![Bytes::from_static(b"HTTP/1.1 200 OK\r\n\r\n"), body]);
        for step in [1, 18, 30, 0, 60, 10] {
            g = g.advance(step);
            let mut seen = Vec::new();
            for i in 0..g.read_iovec_len() {
                // SAFETY: the invariant under test: each iovec describes live bytes owned
                // by `g`, which lives across this read and is not mutated.
                let iov = unsafe { &*g.read_iovec_ptr().add(i) };
                // SAFETY: as above, `iov_len` bytes from `iov_base` are in that buffer.
                let data =
                    unsafe { std::slice::from_raw_parts(iov.iov_base as *const u8, iov.iov_len) };
                seen.extend_from_slice(data);
            }
            let expected: Vec<u8> = g.bufs.iter().flat_map(|b| b.iter().copied()).collect();
            assert_eq!(seen, expected);
            assert_eq!(seen.len(), g.remaining());
        }
        assert_eq!(g.remaining(), 0);
        assert_eq!(g.read_iovec_len(), 0);
    }
}
