//! Intel AMX tile products for the int8 kernels' many-row case (prefill).
//!
//! Sapphire Rapids and later Xeons have eight tile registers of up to 16 rows × 64 bytes and a
//! tile multiply unit: one `tdpbsud` multiplies a 16 × 64 int8 tile by a 64 × 16 one into 16 × 16
//! int32 sums, 16,384 multiply-adds, where one AVX-512 `vpdpbusd` does 64. The q8_0 and 4/5-bit
//! kernels' weight tiles (`qs[g][4 * row + j]`: 16 output rows, 4 inputs per 64-byte row) are already the
//! layout the instruction wants for its second operand, and the activations' int8 rows are its
//! first, read in place with the row stride. A ggml block's scales differ per 32 (or 16) inputs,
//! so each product covers one block and the kernels apply the scales to the 16 × 16 sums in
//! AVX-512 afterwards; the int32 products themselves are exact, as on the VNNI path.
//!
//! Linux hands a process the tile registers' state only when asked (`arch_prctl`
//! `ARCH_REQ_XCOMP_PERM`); [`available`] asks once. `HEARTH_CPU_AMX=0` turns the path off (to
//! compare it with the VNNI path on one machine).
//!
//! Written as inline assembly because Rust's AMX intrinsics are not stable; seven instructions
//! are used (tile configuration load, store and release, zero, load, store, and `tdpbsud`).

use std::sync::OnceLock;

use super::activations::{Activations, Output};

/// Rows of a tile product (the activation rows of one call).
pub const ROWS: usize = 16;

/// A tile product's result: 16 activation rows × 16 output columns.
#[repr(C, align(64))]
pub struct Sums(pub [[i32; 16]; ROWS]);

impl Sums {
    pub fn new() -> Self {
        Self([[0; 16]; ROWS])
    }
}

impl Default for Sums {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether this process may run tile products: the CPU has AMX-TILE and AMX-INT8, the kernel
/// granted the tile state, and `HEARTH_CPU_AMX` is not `0`.
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        let wanted = std::env::var("HEARTH_CPU_AMX").map_or(true, |v| v.trim() != "0");
        let granted = wanted && cpu_has_amx_int8() && request_tile_state();
        if granted {
            tracing::info!("AMX tile products on for prefill's int8 products");
        }
        granted
    })
}

#[cfg(target_arch = "x86_64")]
fn cpu_has_amx_int8() -> bool {
    use std::arch::x86_64::__cpuid_count;
    if __cpuid_count(0, 0).eax < 7 {
        return false;
    }
    let edx = __cpuid_count(7, 0).edx;
    let (amx_tile, amx_int8) = (edx >> 24 & 1 == 1, edx >> 25 & 1 == 1);
    amx_tile
        && amx_int8
        && std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("avx512vnni")
}

#[cfg(not(target_arch = "x86_64"))]
fn cpu_has_amx_int8() -> bool {
    false
}

/// Asks Linux for the tile data state; without it the first tile instruction faults.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn request_tile_state() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with these arguments only changes the process's permission flags.
    let rc =
        unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "AMX tile state refused");
    }
    rc == 0
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn request_tile_state() -> bool {
    false
}

/// The tile configuration `ldtilecfg` reads (palette 1).
#[repr(C, align(64))]
struct Config {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    /// Bytes per row of each tile register.
    colsb: [u16; 16],
    /// Rows of each tile register.
    rows: [u8; 16],
}

/// Tiles configured on this thread for 16-row products over `k` inputs each (16 or 32). When
/// dropped, the configuration the thread had before is put back (or the tiles released if it
/// had none): candle's own AMX product (q4_k, `repack_x86.rs`) configures a thread once and
/// relies on that configuration staying loaded, and a tile instruction without one faults.
///
/// Registers: tmm0 and tmm1 sums (16 × 64 bytes), tmm2 and tmm3 activations (16 × `k`
/// bytes), tmm4 and tmm5 weights (`k / 4` × 64 bytes): two independent products at a time, so
/// that the second multiplies while the first is stored.
pub struct Tiles {
    /// Input bytes per product.
    k: usize,
    /// The thread's configuration before this one (all zero: none).
    previous: Config,
    /// Not `Send`: the configuration belongs to the thread that loaded it.
    _thread_bound: std::marker::PhantomData<*const ()>,
}

impl Tiles {
    /// Configures this thread's tiles for products over `k` inputs (16 or 32).
    ///
    /// # Safety
    /// [`available`] must have returned true.
    #[cfg(target_arch = "x86_64")]
    pub unsafe fn configure(k: usize) -> Self {
        assert!(k == 16 || k == 32, "tile products take 16 or 32 inputs, not {k}");
        let mut config =
            Config { palette: 1, start_row: 0, reserved: [0; 14], colsb: [0; 16], rows: [0; 16] };
        for (tile, rows, colsb) in [(0, 16, 64), (1, 16, 64), (2, 16, k), (3, 16, k)] {
            config.rows[tile] = rows;
            config.colsb[tile] = colsb as u16;
        }
        for tile in [4, 5] {
            config.rows[tile] = (k / 4) as u8;
            config.colsb[tile] = 64;
        }
        let mut previous =
            Config { palette: 0, start_row: 0, reserved: [0; 14], colsb: [0; 16], rows: [0; 16] };
        // SAFETY: the caller's (the CPU has AMX and the process the tile state); both
        // configurations are 64 aligned bytes, and ours is a valid palette-1 layout.
        unsafe {
            std::arch::asm!("sttilecfg [{}]", in(reg) &mut previous, options(nostack));
            std::arch::asm!("ldtilecfg [{}]", in(reg) &config, options(nostack, readonly));
        }
        Self { k, previous, _thread_bound: std::marker::PhantomData }
    }

    /// Input bytes per product.
    pub fn inputs(&self) -> usize {
        self.k
    }

    /// `sums[i] = a[i] · b[i]` for two products over `k` inputs: `a[i]` 16 rows of `k` signed
    /// bytes, `stride` bytes apart; `b[i]` `k / 4` rows of 64 unsigned bytes (input group `g`,
    /// output row `r`, byte `j` at `64 g + 4 r + j`), contiguous.
    ///
    /// # Safety
    /// Each `a[i]` must hold 16 rows of `k` readable bytes at `stride`, each `b[i]` `16 k`
    /// readable bytes, each `sums[i]` be valid for writes and not alias the other.
    #[cfg(target_arch = "x86_64")]
    #[inline]
    pub unsafe fn dot_pair(
        &self,
        a: [*const i8; 2],
        stride: usize,
        b: [*const u8; 2],
        sums: [*mut Sums; 2],
    ) {
        // SAFETY: the caller's.
        unsafe {
            std::arch::asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tileloadd tmm2, [{a0} + {stride} * 1]",
                "tileloadd tmm4, [{b0} + {row} * 1]",
                "tileloadd tmm3, [{a1} + {stride} * 1]",
                "tileloadd tmm5, [{b1} + {row} * 1]",
                "tdpbsud tmm0, tmm2, tmm4",
                "tdpbsud tmm1, tmm3, tmm5",
                "tilestored [{c0} + {row} * 1], tmm0",
                "tilestored [{c1} + {row} * 1], tmm1",
                a0 = in(reg) a[0],
                a1 = in(reg) a[1],
                stride = in(reg) stride,
                b0 = in(reg) b[0],
                b1 = in(reg) b[1],
                c0 = in(reg) sums[0],
                c1 = in(reg) sums[1],
                row = in(reg) 64usize,
                options(nostack),
            );
        }
    }

    /// One product, as [`Self::dot_pair`]'s first.
    ///
    /// # Safety
    /// As [`Self::dot_pair`].
    #[cfg(target_arch = "x86_64")]
    #[inline]
    pub unsafe fn dot(&self, a: *const i8, stride: usize, b: *const u8, sums: *mut Sums) {
        // SAFETY: the caller's.
        unsafe {
            std::arch::asm!(
                "tilezero tmm0",
                "tileloadd tmm2, [{a} + {stride} * 1]",
                "tileloadd tmm4, [{b} + {row} * 1]",
                "tdpbsud tmm0, tmm2, tmm4",
                "tilestored [{c} + {row} * 1], tmm0",
                a = in(reg) a,
                stride = in(reg) stride,
                b = in(reg) b,
                c = in(reg) sums,
                row = in(reg) 64usize,
                options(nostack),
            );
        }
    }

    /// `sums[i] = a[i] · b` for two activation tiles and one weight tile: the weight tile is
    /// loaded once for both.
    ///
    /// # Safety
    /// As [`Self::dot_pair`].
    #[cfg(target_arch = "x86_64")]
    #[inline]
    pub unsafe fn dot_shared(
        &self,
        a: [*const i8; 2],
        stride: usize,
        b: *const u8,
        sums: [*mut Sums; 2],
    ) {
        // SAFETY: the caller's.
        unsafe {
            std::arch::asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tileloadd tmm4, [{b} + {row} * 1]",
                "tileloadd tmm2, [{a0} + {stride} * 1]",
                "tileloadd tmm3, [{a1} + {stride} * 1]",
                "tdpbsud tmm0, tmm2, tmm4",
                "tdpbsud tmm1, tmm3, tmm4",
                "tilestored [{c0} + {row} * 1], tmm0",
                "tilestored [{c1} + {row} * 1], tmm1",
                a0 = in(reg) a[0],
                a1 = in(reg) a[1],
                stride = in(reg) stride,
                b = in(reg) b,
                c0 = in(reg) sums[0],
                c1 = in(reg) sums[1],
                row = in(reg) 64usize,
                options(nostack),
            );
        }
    }

    /// The products of `chunks` (1 or 2) groups of 16 activation rows by every block's weight
    /// tile: `sums[c * blocks + b]` = rows `16 c..16 c + 16` from `a` (`stride` apart; block `b`
    /// at `a + k b`) times `weights[b]`. Two chunks share each weight tile's load; one chunk
    /// runs two blocks at a time.
    ///
    /// # Safety
    /// `a` must hold `16 chunks` rows of `k · weights.len()` readable bytes at `stride`, each
    /// weight pointer `16 k` readable bytes, and `sums` `chunks · weights.len()` entries.
    #[cfg(target_arch = "x86_64")]
    pub unsafe fn dot_blocks(
        &self,
        a: *const i8,
        stride: usize,
        chunks: usize,
        weights: &[*const u8],
        sums: &mut [Sums],
    ) {
        let blocks = weights.len();
        assert!(chunks == 1 || chunks == 2);
        assert!(sums.len() >= chunks * blocks);
        let sums = sums.as_mut_ptr();
        // SAFETY (all): the caller's; every `sums` index is below `chunks · blocks`.
        unsafe {
            let a_at = |chunk: usize, b: usize| a.add(chunk * ROWS * stride + b * self.k);
            if chunks == 2 {
                for (b, &w) in weights.iter().enumerate() {
                    let out = [sums.add(b), sums.add(blocks + b)];
                    self.dot_shared([a_at(0, b), a_at(1, b)], stride, w, out);
                }
                return;
            }
            let mut b = 0;
            while b + 1 < blocks {
                let out = [sums.add(b), sums.add(b + 1)];
                let w = [weights[b], weights[b + 1]];
                self.dot_pair([a_at(0, b), a_at(0, b + 1)], stride, w, out);
                b += 2;
            }
            if b < blocks {
                self.dot(a_at(0, b), stride, weights[b], sums.add(b));
            }
        }
    }
}

impl Tiles {
    /// One stripe's tile pass over rows `first..first + 16 chunks` of `x`: `prepare` fills the
    /// scratch's `weight_tiles` (one per block) and `lanes` (two per block, see
    /// [`write_scaled`]), using `weights` for tiles it unpacks; then every product runs and the
    /// scaled rows are written to `to`.
    ///
    /// # Safety
    /// Those rows exist; the tiles are configured for 32 inputs; each weight tile pointer
    /// `prepare` leaves is 512 readable bytes that outlive the call; no other thread writes
    /// the stripe's columns meanwhile.
    #[cfg(target_arch = "x86_64")]
    pub unsafe fn tile_pass(
        &self,
        x: &Activations,
        first: usize,
        chunks: usize,
        unpacked: usize,
        to: Columns,
        prepare: impl FnOnce(&mut Scratch),
    ) {
        let blocks = x.blocks;
        let stride = blocks * self.k;
        assert!((first + chunks * ROWS) * blocks <= x.scales.len());
        with_scratch(chunks * blocks, unpacked, 2 * blocks, |scratch| {
            prepare(scratch);
            assert_eq!(scratch.weight_tiles.len(), blocks, "one weight tile per block");
            // SAFETY: the caller's for the rows (`stride` bytes each in `qs`) and the weight
            // tiles; `sums` has `chunks · blocks` entries, `lanes` `2 · blocks`.
            unsafe {
                let a = x.qs.as_ptr().add(first * stride);
                self.dot_blocks(a, stride, chunks, &scratch.weight_tiles, &mut scratch.sums);
                write_scaled(x, first, chunks, &scratch.sums, &scratch.lanes[..2 * blocks], to);
            }
        });
    }
}

/// Where a stripe's results go: its 16 columns of every row of `out`.
#[derive(Clone, Copy)]
pub struct Columns {
    pub out: Output,
    pub out_dim: usize,
    pub first_column: usize,
}

/// Applies the blocks' scales to a tile pass's sums and writes rows `first..first + 16 chunks`:
/// `y[r] = Σ_b f32(sums[chunk · blocks + b][r]) · (lanes[2b] · x_scale[r, b]) − lanes[2b + 1] ·
/// x_sum[r, b]`, with `x_scale` the activation block's scale and `x_sum` its sum times that
/// scale (`Activations::scaled_sums`). `lanes[2b]` is the block's weight scales, `lanes[2b + 1]`
/// what its activation sum multiplies (the weights' integer offset times their scale, plus their
/// minimum). Four rows at a time: each row's sum is a chain of dependent FMAs, so one row alone
/// would wait on each FMA's latency.
///
/// # Safety
/// The CPU has AVX-512; `sums` holds `chunks · blocks` products of those rows; no other thread
/// writes the stripe's columns meanwhile.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub unsafe fn write_scaled(
    x: &Activations,
    first: usize,
    chunks: usize,
    sums: &[Sums],
    lanes: &[Lanes],
    to: Columns,
) {
    use std::arch::x86_64::*;
    const GROUP: usize = 4;
    let blocks = x.blocks;
    assert!(sums.len() >= chunks * blocks && lanes.len() >= 2 * blocks);
    assert!((first + chunks * ROWS) * blocks <= x.scaled_sums.len());
    for group in (0..chunks * ROWS).step_by(GROUP) {
        let rows: [usize; GROUP] = std::array::from_fn(|i| (first + group + i) * blocks);
        let (chunk, group_in_chunk) = (group / ROWS, group % ROWS);
        let chunk_sums = &sums[chunk * blocks..(chunk + 1) * blocks];
        let mut acc = [_mm512_setzero_ps(); GROUP];
        for (b, (sums, lanes)) in chunk_sums.iter().zip(lanes.chunks_exact(2)).enumerate() {
            // SAFETY: `Lanes` are 64 aligned bytes.
            let (scale, offset) =
                (_mm512_load_ps(lanes[0].0.as_ptr()), _mm512_load_ps(lanes[1].0.as_ptr()));
            for (i, acc) in acc.iter_mut().enumerate() {
                let at = rows[i] + b;
                // SAFETY: a row of sums is 64 aligned bytes.
                let dot = _mm512_cvtepi32_ps(_mm512_load_si512(
                    sums.0[group_in_chunk + i].as_ptr() as *const __m512i,
                ));
                let x_scale = _mm512_mul_ps(scale, _mm512_set1_ps(x.scales[at]));
                *acc = _mm512_fmadd_ps(dot, x_scale, *acc);
                *acc = _mm512_fnmadd_ps(offset, _mm512_set1_ps(x.scaled_sums[at]), *acc);
            }
        }
        for (i, acc) in acc.iter().enumerate() {
            let at = (first + group + i) * to.out_dim + to.first_column;
            assert!(at + 16 <= to.out.len);
            // SAFETY: in bounds (asserted); the caller's for exclusive access.
            unsafe { _mm512_storeu_ps(to.out.ptr.add(at), *acc) };
        }
    }
}

/// Per-thread buffers for a tile pass: the products' sums, and unpacked weight tiles.
#[derive(Default)]
pub struct Scratch {
    pub sums: Vec<Sums>,
    pub weights: Vec<WeightTile>,
    /// Per-block vectors of the weights' scales (and what the kernel derives from them).
    pub lanes: Vec<Lanes>,
    /// Per block: its weight tile.
    pub weight_tiles: Vec<*const u8>,
}

/// One f32 per output row of a tile.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub struct Lanes(pub [f32; 16]);

/// 32 inputs × 16 output rows of unsigned bytes, the weight operand's layout.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub struct WeightTile(pub [[u8; 64]; 8]);

/// Runs `f` with this thread's scratch buffers, `sums`, `weights` and `lanes` holding at least
/// the given counts (their contents are whatever the last pass left).
pub fn with_scratch<R>(
    sums: usize,
    weights: usize,
    lanes: usize,
    f: impl FnOnce(&mut Scratch) -> R,
) -> R {
    thread_local! {
        static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::default();
    }
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        if scratch.sums.len() < sums {
            scratch.sums.resize_with(sums, Sums::new);
        }
        if scratch.weights.len() < weights {
            scratch.weights.resize(weights, WeightTile([[0; 64]; 8]));
        }
        if scratch.lanes.len() < lanes {
            scratch.lanes.resize(lanes, Lanes([0.0; 16]));
        }
        scratch.weight_tiles.clear();
        f(&mut scratch)
    })
}

#[cfg(target_arch = "x86_64")]
impl Drop for Tiles {
    fn drop(&mut self) {
        // SAFETY: tiles were configured (the only constructor), so the CPU has AMX; the
        // previous configuration is what `sttilecfg` stored, so valid when not all zero.
        unsafe {
            if self.previous.palette == 0 {
                std::arch::asm!("tilerelease", options(nostack, nomem));
            } else {
                std::arch::asm!("ldtilecfg [{}]", in(reg) &self.previous, options(nostack, readonly));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(a: &[i8], stride: usize, b: &[u8], inputs: std::ops::Range<usize>) -> Sums {
        let mut sums = Sums::new();
        for (m, row) in sums.0.iter_mut().enumerate() {
            for (n, sum) in row.iter_mut().enumerate() {
                *sum = inputs
                    .clone()
                    .map(|k| a[m * stride + k] as i32 * b[64 * (k / 4) + 4 * n + k % 4] as i32)
                    .sum();
            }
        }
        sums
    }

    #[test]
    fn tile_products_match_integer_dot_products() {
        if !available() {
            eprintln!("no AMX on this CPU (or HEARTH_CPU_AMX=0): the tile path is not run here");
            return;
        }
        let (width, blocks) = (96, 3);
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        };
        let a: Vec<i8> = (0..33 * width).map(|_| next() as i8).collect();
        let mut b: Vec<u8> = (0..blocks * 512).map(|_| next()).collect();
        // Extremes: the largest products of either sign.
        b[..64].fill(255);
        let weights: Vec<*const u8> = (0..blocks).map(|i| b[512 * i..].as_ptr()).collect();
        let tile = |chunk: usize, block: usize, k: usize| &a[16 * chunk * width + k * block..];
        // SAFETY: AMX is available (checked); `a` holds 33 rows of three blocks, the weights
        // three 512-byte tiles, and `sums` has room for every product.
        let tiles = unsafe { Tiles::configure(32) };
        for chunks in [1, 2] {
            let mut sums: Vec<Sums> = (0..chunks * blocks).map(|_| Sums::new()).collect();
            unsafe { tiles.dot_blocks(a.as_ptr(), width, chunks, &weights, &mut sums) };
            for (i, sums) in sums.iter().enumerate() {
                let (chunk, block) = (i / blocks, i % blocks);
                let want = reference(tile(chunk, block, 32), width, &b[512 * block..], 0..32);
                assert_eq!(sums.0, want.0, "{chunks} chunks, block {block} of chunk {chunk}");
            }
        }
        drop(tiles);
        // Products over 16 inputs: a k-quant's halves, weight rows 4 h..4 h + 4.
        let tiles = unsafe { Tiles::configure(16) };
        let halves = [b.as_ptr(), b[256..].as_ptr()];
        let mut sums = [Sums::new(), Sums::new()];
        unsafe { tiles.dot_blocks(a.as_ptr(), width, 1, &halves, &mut sums) };
        assert_eq!(sums[0].0, reference(&a, width, &b, 0..16).0);
        assert_eq!(sums[1].0, reference(&a[16..], width, &b[256..], 0..16).0);
    }

    fn current_config() -> Config {
        let mut config =
            Config { palette: 9, start_row: 9, reserved: [9; 14], colsb: [9; 16], rows: [9; 16] };
        // SAFETY: only called where AMX is available; 64 aligned bytes.
        unsafe { std::arch::asm!("sttilecfg [{}]", in(reg) &mut config, options(nostack)) };
        config
    }

    #[test]
    fn a_threads_earlier_configuration_is_put_back() {
        if !available() {
            eprintln!("no AMX on this CPU (or HEARTH_CPU_AMX=0): the tile path is not run here");
            return;
        }
        // A fresh thread: no configuration before, none after.
        std::thread::spawn(|| {
            assert_eq!(current_config().palette, 0);
            drop(unsafe { Tiles::configure(32) });
            assert_eq!(current_config().palette, 0, "released");
        })
        .join()
        .unwrap();
        // A thread another kernel configured (as candle's q4_k product does): its layout is
        // loaded again afterwards.
        std::thread::spawn(|| {
            let mut theirs = Config {
                palette: 1,
                start_row: 0,
                reserved: [0; 14],
                colsb: [0; 16],
                rows: [0; 16],
            };
            theirs.rows[..8].fill(16);
            theirs.colsb[..8].fill(32);
            // SAFETY: AMX is available; a valid palette-1 configuration.
            unsafe { std::arch::asm!("ldtilecfg [{}]", in(reg) &theirs, options(nostack)) };
            let tiles = unsafe { Tiles::configure(16) };
            assert_eq!(current_config().colsb[2], 16, "ours while it lives");
            drop(tiles);
            let after = current_config();
            assert_eq!((after.palette, after.rows, after.colsb), (1, theirs.rows, theirs.colsb));
            unsafe { std::arch::asm!("tilerelease", options(nostack, nomem)) };
        })
        .join()
        .unwrap();
    }
}
