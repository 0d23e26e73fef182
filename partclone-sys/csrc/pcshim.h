/*
 * pcshim.h - used-block bitmaps of ext2/3/4 and NTFS filesystems.
 *
 * Part of blockswarm's partclone-sys crate.
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * A small C shim in the shape of a partclone filesystem module: open a
 * filesystem read-only, report its geometry, and fill a bitmap of the
 * blocks that are in use.  The filesystem libraries (libext2fs and,
 * optionally, libntfs-3g) are only used by pcshim.c; this header depends on
 * <stdint.h> alone so that one set of Rust bindings serves every build.
 *
 * Conventions:
 *  - every function that can fail returns 0 on success and a non-zero value
 *    on failure, and then fills the caller's pcs_error (if not NULL);
 *  - nothing here prints, logs or exits;
 *  - a pcs_fs is not safe for concurrent use, but may be moved between
 *    threads; distinct pcs_fs handles are independent.
 */
#ifndef PCSHIM_H
#define PCSHIM_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/** Size of pcs_error.message, including the terminating NUL. */
#define PCS_ERROR_MESSAGE_LEN 512
/** Size of pcs_info.fs_type, including the terminating NUL. */
#define PCS_FS_TYPE_LEN 16

/*
 * Error codes of the shim itself.  They are negative so they never collide
 * with errno values (small and positive) or libext2fs/com_err codes (large
 * and positive).
 */
/** A NULL or otherwise invalid argument was passed. */
#define PCS_ERR_INVALID_ARGUMENT (-1)
/** The caller's bitmap buffer is smaller than pcs_info.bitmap_len. */
#define PCS_ERR_BUFFER_TOO_SMALL (-2)
/** The device or image is smaller than the filesystem it contains. */
#define PCS_ERR_TRUNCATED (-3)
/** The filesystem has a geometry the shim does not accept. */
#define PCS_ERR_BAD_GEOMETRY (-4)
/** The requested filesystem module was not compiled into the shim. */
#define PCS_ERR_NOT_COMPILED (-5)
/** The allocation bitmap could not be read completely. */
#define PCS_ERR_SHORT_BITMAP (-6)
/** pcs_check found the filesystem not clean (errors recorded, not cleanly
 * unmounted, journal to replay, marked dirty) or its bitmap disagrees with
 * its free-space counts. */
#define PCS_ERR_FS_CHECK (-7)

/** Error report: a numeric code and a human-readable, NUL-terminated
 * message with context (which file, which step). */
typedef struct pcs_error {
    long code;
    char message[PCS_ERROR_MESSAGE_LEN];
} pcs_error;

/** Opaque handle of an open filesystem. */
typedef struct pcs_fs pcs_fs;

/** Geometry of an open filesystem. */
typedef struct pcs_info {
    /** "ext2", "ext3", "ext4" or "ntfs", NUL-terminated. */
    char fs_type[PCS_FS_TYPE_LEN];
    /** Bytes per block (ext block, NTFS cluster). */
    uint64_t block_size;
    /** Number of blocks the filesystem spans, starting at byte 0. */
    uint64_t total_blocks;
    /** Number of blocks whose bit is set in the used-block bitmap. */
    uint64_t used_blocks;
    /** total_blocks * block_size. */
    uint64_t fs_size;
    /** Size in bytes of the underlying file or block device; equals
     * fs_size when it could not be determined.  Never smaller than
     * fs_size (such a device is refused with PCS_ERR_TRUNCATED). */
    uint64_t device_size;
    /** Bytes needed by pcs_fill_bitmap: (total_blocks + 7) / 8. */
    uint64_t bitmap_len;
} pcs_info;

/**
 * Open an ext2/ext3/ext4 filesystem read-only and read its block bitmap.
 * On success *out receives a handle to release with pcs_close().
 */
int pcs_open_extfs(const char *path, pcs_fs **out, pcs_error *err);

/**
 * Open an NTFS filesystem read-only (libntfs-3g).  When the shim was built
 * without NTFS support this fails with PCS_ERR_NOT_COMPILED.
 */
int pcs_open_ntfs(const char *path, pcs_fs **out, pcs_error *err);

/** 1 if the shim was built with NTFS support, 0 otherwise. */
int pcs_ntfs_supported(void);

/**
 * Check that an open filesystem is clean enough to image, as partclone does
 * before it copies (and more).  ext2/3/4: s_state must have EXT2_VALID_FS
 * and not EXT2_ERROR_FS, no errors recorded (s_error_count,
 * s_first/last_error_time), no journal to replay (needs_recovery), and the
 * used blocks of the bitmap must equal s_blocks_count - s_free_blocks_count,
 * and per group the group descriptor's free count.  NTFS: the volume must
 * not be marked dirty, libntfs-3g's free-cluster count must agree with the
 * bitmap, and the clusters of $MFT, $MFTMirr and $Bitmap must be marked
 * used.  Returns 0 when clean, else PCS_ERR_FS_CHECK with every reason
 * found in err->message (or another code when the check itself failed).
 * The handle stays usable either way.
 */
int pcs_check(pcs_fs *fs, pcs_error *err);

/** Copy the geometry of an open filesystem into *info. */
int pcs_get_info(const pcs_fs *fs, pcs_info *info);

/**
 * Fill buf with the used-block bitmap: bit (i % 8) of byte (i / 8), least
 * significant bit first, is set when block i is in use, for i in
 * 0..total_blocks.  Bits past total_blocks in the last byte are cleared.
 * Everything the filesystem marks allocated counts as used, metadata and
 * journal included, and so do blocks before the first data block (the boot
 * block of 1 KiB-block ext filesystems).  buflen must be at least
 * pcs_info.bitmap_len; bytes past that are left untouched.
 */
int pcs_fill_bitmap(pcs_fs *fs, uint8_t *buf, uint64_t buflen, pcs_error *err);

/** Close the filesystem and free the handle.  NULL is accepted. */
void pcs_close(pcs_fs *fs);

#ifdef __cplusplus
}
#endif

#endif /* PCSHIM_H */
