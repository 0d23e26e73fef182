/*
 * pcshim.c - used-block bitmaps of ext2/3/4 (libext2fs) and NTFS
 * (libntfs-3g, with PCS_HAVE_NTFS) filesystems.
 *
 * Part of blockswarm's partclone-sys crate.
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Like a partclone filesystem module this opens a filesystem read-only and
 * walks its allocation bitmap, but it reports failures through pcs_error
 * instead of printing and exiting.
 */
#define _GNU_SOURCE 1

#include "pcshim.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#ifdef __linux__
#include <linux/fs.h> /* BLKGETSIZE64 */
#endif

#include <et/com_err.h>
#include <ext2fs/ext2_err.h>
#include <ext2fs/ext2fs.h>

#ifdef PCS_HAVE_NTFS
#include <ntfs-3g/types.h>
#include <ntfs-3g/attrib.h>
#include <ntfs-3g/device.h>
#include <ntfs-3g/logging.h>
#include <ntfs-3g/volume.h>
#endif

/* Bits fetched from the filesystem's bitmap per step of a walk; a multiple
 * of 8 (1 MiB worth of bitmap). */
#define PCS_CHUNK_BITS ((uint64_t)8 * 1024 * 1024)

enum pcs_kind {
    PCS_KIND_EXT = 1,
    PCS_KIND_NTFS = 2,
};

struct pcs_fs {
    enum pcs_kind kind;
    pcs_info info;
    /* Blocks below this number are not covered by the filesystem's bitmap
     * and count as used (the boot block of 1 KiB-block ext filesystems). */
    uint64_t first_mapped;
    ext2_filsys ext;
#ifdef PCS_HAVE_NTFS
    ntfs_volume *ntfs;
#endif
};

/*
 * Reads bits [first_mapped + rel, first_mapped + rel + nbits) of the
 * filesystem's allocation bitmap into tmp, bit j of tmp (LSB first) for
 * block first_mapped + rel + j.  rel is a multiple of 8.  Bits of tmp past
 * nbits may hold anything.
 */
typedef int (*pcs_fetch_fn)(pcs_fs *fs, uint64_t rel, uint64_t nbits,
                            uint8_t *tmp, pcs_error *err);

/* ------------------------------------------------------------------ */
/* errors                                                             */
/* ------------------------------------------------------------------ */

static void set_error(pcs_error *err, long code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_error(pcs_error *err, long code, const char *fmt, ...)
{
    va_list ap;

    if (!err)
        return;
    err->code = code;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof(err->message), fmt, ap);
    va_end(ap);
}

static void clear_error(pcs_error *err)
{
    if (!err)
        return;
    err->code = 0;
    err->message[0] = '\0';
}

/*
 * Appends one reason of a failed check to err->message ("; " between
 * reasons) and counts it in *n.  A message too long for the buffer is cut.
 */
static void add_reason(pcs_error *err, int *n, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void add_reason(pcs_error *err, int *n, const char *fmt, ...)
{
    va_list ap;
    size_t len;

    (*n)++;
    if (!err)
        return;
    err->code = PCS_ERR_FS_CHECK;
    len = strnlen(err->message, sizeof(err->message));
    if (*n > 1 && len + 2 < sizeof(err->message)) {
        memcpy(err->message + len, "; ", 3);
        len += 2;
    }
    if (len + 1 >= sizeof(err->message))
        return;
    va_start(ap, fmt);
    vsnprintf(err->message + len, sizeof(err->message) - len, fmt, ap);
    va_end(ap);
}

static pthread_once_t ext2_errors_once = PTHREAD_ONCE_INIT;

static void init_ext2_errors(void)
{
    initialize_ext2_error_table();
}

/* Text of a libext2fs / com_err code (errno values included). */
static const char *ext2_message(errcode_t code)
{
    pthread_once(&ext2_errors_once, init_ext2_errors);
    return error_message(code);
}

/* ------------------------------------------------------------------ */
/* helpers                                                            */
/* ------------------------------------------------------------------ */

/* Size in bytes of a regular file or block device; 0 when unknown. */
static uint64_t media_size(const char *path)
{
    struct stat st;
    uint64_t size = 0;
    int fd;

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    if (fstat(fd, &st) == 0) {
        if (S_ISREG(st.st_mode)) {
            size = (uint64_t)st.st_size;
        }
#ifdef BLKGETSIZE64
        else if (S_ISBLK(st.st_mode)) {
            uint64_t bytes = 0;
            if (ioctl(fd, BLKGETSIZE64, &bytes) == 0)
                size = bytes;
        }
#endif
    }
    close(fd);
    return size;
}

static uint64_t popcount_bytes(const uint8_t *p, uint64_t n)
{
    uint64_t count = 0;
    uint64_t i = 0;

    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, sizeof(w));
        count += (uint64_t)__builtin_popcountll(w);
    }
    for (; i < n; i++)
        count += (uint64_t)__builtin_popcount(p[i]);
    return count;
}

static int fill_geometry(pcs_fs *fs, const char *type, uint64_t block_size,
                         uint64_t total_blocks, const char *path,
                         pcs_error *err)
{
    pcs_info *info = &fs->info;
    uint64_t media;

    if (block_size == 0 || total_blocks == 0 ||
        total_blocks > UINT64_MAX / block_size) {
        set_error(err, PCS_ERR_BAD_GEOMETRY,
                  "implausible geometry: %llu blocks of %llu bytes",
                  (unsigned long long)total_blocks,
                  (unsigned long long)block_size);
        return -1;
    }
    snprintf(info->fs_type, sizeof(info->fs_type), "%s", type);
    info->block_size = block_size;
    info->total_blocks = total_blocks;
    info->fs_size = total_blocks * block_size;
    info->bitmap_len = (total_blocks + 7) / 8;

    media = media_size(path);
    if (media != 0 && media < info->fs_size) {
        set_error(err, PCS_ERR_TRUNCATED,
                  "%s filesystem spans %llu bytes (%llu blocks of %llu) but "
                  "the device holds only %llu bytes (truncated image?)",
                  type, (unsigned long long)info->fs_size,
                  (unsigned long long)total_blocks,
                  (unsigned long long)block_size, (unsigned long long)media);
        return -1;
    }
    info->device_size = media != 0 ? media : info->fs_size;
    return 0;
}

/*
 * Walks the whole bitmap in chunks.  Counts the used blocks into *used and,
 * when out is not NULL, ORs them into out (which must be zeroed and hold
 * bitmap_len bytes).  Blocks below first_mapped count as used.
 */
static int walk_bitmap(pcs_fs *fs, pcs_fetch_fn fetch, uint8_t *out,
                       uint64_t *used, pcs_error *err)
{
    const uint64_t total = fs->info.total_blocks;
    const uint64_t first = fs->first_mapped < total ? fs->first_mapped : total;
    const uint64_t mapped = total - first;
    const unsigned shift = (unsigned)(first & 7);
    uint64_t count = first;
    uint64_t rel, b;
    uint8_t *tmp;

    for (b = 0; out && b < first; b++)
        out[b >> 3] |= (uint8_t)(1u << (b & 7));

    tmp = malloc(PCS_CHUNK_BITS / 8 + 1);
    if (!tmp) {
        set_error(err, ENOMEM, "cannot allocate a bitmap buffer: %s",
                  strerror(ENOMEM));
        return -1;
    }

    for (rel = 0; rel < mapped; rel += PCS_CHUNK_BITS) {
        uint64_t nbits = mapped - rel;
        uint64_t nbytes, i;
        uint8_t *dst;

        if (nbits > PCS_CHUNK_BITS)
            nbits = PCS_CHUNK_BITS;
        nbytes = (nbits + 7) / 8;
        memset(tmp, 0, nbytes + 1);
        if (fetch(fs, rel, nbits, tmp, err) != 0) {
            free(tmp);
            return -1;
        }
        if (nbits & 7)
            tmp[nbytes - 1] &= (uint8_t)((1u << (nbits & 7)) - 1);
        count += popcount_bytes(tmp, nbytes);
        if (!out)
            continue;
        /* Block first + rel + j lands at bit (first + rel + j) of out;
         * rel is a multiple of 8, so only first's low bits shift. */
        dst = out + ((first + rel) >> 3);
        if (shift == 0) {
            for (i = 0; i < nbytes; i++)
                dst[i] |= tmp[i];
        } else {
            for (i = 0; i < nbytes; i++) {
                unsigned v = (unsigned)tmp[i] << shift;
                dst[i] |= (uint8_t)(v & 0xff);
                /* Set bits never lie past total, so this stays within
                 * bitmap_len. */
                if (v >> 8)
                    dst[i + 1] |= (uint8_t)(v >> 8);
            }
        }
    }
    free(tmp);
    *used = count;
    return 0;
}

static int check_handle(const pcs_fs *fs, pcs_error *err)
{
    if (!fs || (fs->kind != PCS_KIND_EXT && fs->kind != PCS_KIND_NTFS)) {
        set_error(err, PCS_ERR_INVALID_ARGUMENT, "invalid pcs_fs handle");
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* ext2 / ext3 / ext4                                                 */
/* ------------------------------------------------------------------ */

static const char *ext_type(ext2_filsys fs)
{
    struct ext2_super_block *sb = fs->super;

    if (ext2fs_has_feature_extents(sb) || ext2fs_has_feature_flex_bg(sb) ||
        ext2fs_has_feature_64bit(sb) || ext2fs_has_feature_huge_file(sb) ||
        ext2fs_has_feature_dir_nlink(sb) ||
        ext2fs_has_feature_extra_isize(sb) ||
        ext2fs_has_feature_metadata_csum(sb) ||
        ext2fs_has_feature_gdt_csum(sb) || ext2fs_has_feature_bigalloc(sb) ||
        ext2fs_has_feature_inline_data(sb) || ext2fs_has_feature_mmp(sb) ||
        ext2fs_has_feature_csum_seed(sb) || ext2fs_has_feature_largedir(sb) ||
        ext2fs_has_feature_ea_inode(sb) || ext2fs_has_feature_encrypt(sb) ||
        ext2fs_has_feature_casefold(sb))
        return "ext4";
    if (ext2fs_has_feature_journal(sb))
        return "ext3";
    return "ext2";
}

static int ext_fetch(pcs_fs *fs, uint64_t rel, uint64_t nbits, uint8_t *tmp,
                     pcs_error *err)
{
    ext2_filsys e = fs->ext;
    const blk64_t start = (blk64_t)(fs->first_mapped + rel);
    errcode_t rc;
    uint64_t j;

    if (EXT2FS_CLUSTER_RATIO(e) > 1) {
        /* bigalloc: the block bitmap is a cluster bitmap; the per-block
         * test maps each block to its cluster. */
        for (j = 0; j < nbits; j++)
            if (ext2fs_test_block_bitmap2(e->block_map, start + j))
                tmp[j >> 3] |= (uint8_t)(1u << (j & 7));
        return 0;
    }
    /* start - first_data_block is a multiple of 8, as partclone's group by
     * group reads are: every bitmap backend can copy such ranges whole. */
    rc = ext2fs_get_block_bitmap_range2(e->block_map, start, (size_t)nbits,
                                        tmp);
    if (rc) {
        set_error(err, (long)rc,
                  "ext2fs_get_block_bitmap_range2(blocks %llu..%llu): %s",
                  (unsigned long long)start,
                  (unsigned long long)(start + nbits), ext2_message(rc));
        return -1;
    }
    return 0;
}

int pcs_open_extfs(const char *path, pcs_fs **out, pcs_error *err)
{
    const int flags = EXT2_FLAG_64BITS | EXT2_FLAG_SOFTSUPP_FEATURES;
    ext2_filsys e = NULL;
    errcode_t rc;
    pcs_fs *fs;
    uint64_t used = 0;

    clear_error(err);
    if (!path || !out) {
        set_error(err, PCS_ERR_INVALID_ARGUMENT,
                  "pcs_open_extfs: path and out must not be NULL");
        return -1;
    }
    *out = NULL;

    rc = ext2fs_open(path, flags, 0, 0, unix_io_manager, &e);
    if (rc) {
        if (rc == EXT2_ET_BAD_MAGIC || rc == EXT2_ET_SB_CSUM_INVALID ||
            rc == EXT2_ET_CORRUPT_SUPERBLOCK)
            set_error(err, (long)rc,
                      "no valid ext2/3/4 superblock (ext2fs_open: %s)",
                      ext2_message(rc));
        else
            set_error(err, (long)rc, "ext2fs_open: %s", ext2_message(rc));
        return -1;
    }
    if (ext2fs_has_feature_journal_dev(e->super)) {
        set_error(err, EXT2_ET_UNSUPP_FEATURE,
                  "this is an external ext3/4 journal device, which has no "
                  "block bitmap");
        ext2fs_close_free(&e);
        return -1;
    }

    fs = calloc(1, sizeof(*fs));
    if (!fs) {
        set_error(err, ENOMEM, "cannot allocate a pcs_fs: %s",
                  strerror(ENOMEM));
        ext2fs_close_free(&e);
        return -1;
    }
    fs->kind = PCS_KIND_EXT;
    fs->ext = e;
    fs->first_mapped = e->super->s_first_data_block;

    if (fill_geometry(fs, ext_type(e), (uint64_t)EXT2_BLOCK_SIZE(e->super),
                      (uint64_t)ext2fs_blocks_count(e->super), path,
                      err) != 0) {
        pcs_close(fs);
        return -1;
    }

    rc = ext2fs_read_block_bitmap(e);
    if (rc) {
        set_error(err, (long)rc, "ext2fs_read_block_bitmap: %s",
                  ext2_message(rc));
        pcs_close(fs);
        return -1;
    }
    if (!e->block_map) {
        set_error(err, PCS_ERR_SHORT_BITMAP,
                  "ext2fs_read_block_bitmap returned no bitmap");
        pcs_close(fs);
        return -1;
    }

    if (walk_bitmap(fs, ext_fetch, NULL, &used, err) != 0) {
        pcs_close(fs);
        return -1;
    }
    fs->info.used_blocks = used;
    *out = fs;
    return 0;
}

/* Used blocks of group g according to the bitmap, in the unit of the
 * group descriptors' free counts (clusters with bigalloc), and the size of
 * the group in that unit. */
static int ext_group_used(pcs_fs *fs, dgrp_t g, uint8_t *buf, uint64_t *used,
                          uint64_t *size, pcs_error *err)
{
    ext2_filsys e = fs->ext;
    const uint64_t total = ext2fs_blocks_count(e->super);
    const uint64_t ratio = (uint64_t)EXT2FS_CLUSTER_RATIO(e);
    const uint64_t bpg = (uint64_t)e->super->s_blocks_per_group;
    const uint64_t start = (uint64_t)e->super->s_first_data_block + g * bpg;
    uint64_t blocks = total > start ? total - start : 0;
    uint64_t j, n;
    errcode_t rc;

    if (blocks > bpg)
        blocks = bpg;
    if (ratio > 1) {
        /* bigalloc: one test per cluster (its first block). */
        n = (blocks + ratio - 1) / ratio;
        *used = 0;
        for (j = 0; j < n; j++)
            if (ext2fs_test_block_bitmap2(e->block_map,
                                          (blk64_t)(start + j * ratio)))
                (*used)++;
        *size = n;
        return 0;
    }
    memset(buf, 0, (size_t)((blocks + 7) / 8 + 1));
    rc = ext2fs_get_block_bitmap_range2(e->block_map, (blk64_t)start,
                                        (size_t)blocks, buf);
    if (rc) {
        set_error(err, (long)rc,
                  "ext2fs_get_block_bitmap_range2(group %u): %s", (unsigned)g,
                  ext2_message(rc));
        return -1;
    }
    if (blocks & 7)
        buf[blocks / 8] &= (uint8_t)((1u << (blocks & 7)) - 1);
    *used = popcount_bytes(buf, (blocks + 7) / 8);
    *size = blocks;
    return 0;
}

static int ext_check(pcs_fs *fs, pcs_error *err)
{
    ext2_filsys e = fs->ext;
    struct ext2_super_block *sb = e->super;
    const uint64_t total = ext2fs_blocks_count(sb);
    const uint64_t sb_free = ext2fs_free_blocks_count(sb);
    uint64_t bad_groups = 0, first_bad = 0, bad_used = 0, bad_free = 0;
    uint8_t *buf;
    dgrp_t g;
    int n = 0;

    if (sb->s_state & EXT2_ERROR_FS)
        add_reason(err, &n, "the superblock state says errors were found "
                            "(s_state 0x%x)", (unsigned)sb->s_state);
    if (!(sb->s_state & EXT2_VALID_FS))
        add_reason(err, &n, "not cleanly unmounted (s_state 0x%x lacks "
                            "EXT2_VALID_FS)", (unsigned)sb->s_state);
    if (sb->s_error_count || sb->s_first_error_time || sb->s_last_error_time) {
        if (sb->s_last_error_func[0])
            add_reason(err, &n, "the kernel recorded errors (s_error_count %u, "
                                "the last in %.32s, inode %u, block %llu)",
                       (unsigned)sb->s_error_count,
                       (const char *)sb->s_last_error_func,
                       (unsigned)sb->s_last_error_ino,
                       (unsigned long long)sb->s_last_error_block);
        else
            add_reason(err, &n, "the kernel recorded errors (s_error_count %u)",
                       (unsigned)sb->s_error_count);
    }
    if (ext2fs_has_feature_journal_needs_recovery(sb))
        /* Blocks allocated by committed but not yet checkpointed
         * transactions are still free in the on-disk bitmap. */
        add_reason(err, &n, "the journal needs recovery (mounted read-write "
                            "or not cleanly unmounted: the bitmap may miss "
                            "blocks of committed transactions)");
    if (sb_free > total || fs->info.used_blocks != total - sb_free)
        add_reason(err, &n, "the bitmap has %llu used blocks but the "
                            "superblock says %llu of %llu are free (%llu "
                            "used)",
                   (unsigned long long)fs->info.used_blocks,
                   (unsigned long long)sb_free, (unsigned long long)total,
                   (unsigned long long)(sb_free > total ? 0 : total - sb_free));

    buf = malloc((size_t)sb->s_blocks_per_group / 8 + 2);
    if (!buf) {
        set_error(err, ENOMEM, "cannot allocate a group bitmap: %s",
                  strerror(ENOMEM));
        return -1;
    }
    for (g = 0; g < e->group_desc_count; g++) {
        uint64_t used = 0, size = 0, gfree;

        if (ext_group_used(fs, g, buf, &used, &size, err) != 0) {
            free(buf);
            return -1;
        }
        gfree = (uint64_t)ext2fs_bg_free_blocks_count(e, g);
        if (gfree + used != size) {
            if (bad_groups == 0) {
                first_bad = g;
                bad_used = used;
                bad_free = gfree;
            }
            bad_groups++;
        }
    }
    free(buf);
    if (bad_groups)
        add_reason(err, &n, "%llu group(s) whose free count disagrees with "
                            "the bitmap, the first group %llu: %llu used, "
                            "descriptor says %llu free of %llu",
                   (unsigned long long)bad_groups,
                   (unsigned long long)first_bad,
                   (unsigned long long)bad_used, (unsigned long long)bad_free,
                   (unsigned long long)(EXT2FS_CLUSTER_RATIO(e) > 1
                                            ? EXT2_CLUSTERS_PER_GROUP(sb)
                                            : sb->s_blocks_per_group));
    if (n)
        return -1;
    return 0;
}

/* ------------------------------------------------------------------ */
/* NTFS                                                               */
/* ------------------------------------------------------------------ */

#ifdef PCS_HAVE_NTFS

static pthread_once_t ntfs_log_once = PTHREAD_ONCE_INIT;

static void silence_ntfs_log(void)
{
    /* The shim never prints; libntfs-3g reports through errno. */
    ntfs_log_set_handler(ntfs_log_handler_null);
}

static int ntfs_fetch(pcs_fs *fs, uint64_t rel, uint64_t nbits, uint8_t *tmp,
                      pcs_error *err)
{
    ntfs_attr *na = fs->ntfs->lcnbmp_na;
    const s64 want = (s64)((nbits + 7) / 8);
    const s64 pos = (s64)(rel / 8);
    s64 done = 0;

    /* Like partclone's NTFS module: the $Bitmap data attribute, read with
     * ntfs_attr_pread, one bit per cluster, LSB first. */
    while (done < want) {
        s64 n = ntfs_attr_pread(na, pos + done, want - done, tmp + done);
        if (n < 0) {
            int e = errno;
            set_error(err, e, "ntfs_attr_pread($Bitmap at byte %lld): %s",
                      (long long)(pos + done), strerror(e));
            return -1;
        }
        if (n == 0) {
            set_error(err, PCS_ERR_SHORT_BITMAP,
                      "$Bitmap ends at byte %lld, %lld bytes short",
                      (long long)(pos + done), (long long)(want - done));
            return -1;
        }
        done += n;
    }
    return 0;
}

int pcs_open_ntfs(const char *path, pcs_fs **out, pcs_error *err)
{
    ntfs_volume *vol;
    pcs_fs *fs;
    uint64_t used = 0;
    uint64_t need;

    clear_error(err);
    if (!path || !out) {
        set_error(err, PCS_ERR_INVALID_ARGUMENT,
                  "pcs_open_ntfs: path and out must not be NULL");
        return -1;
    }
    *out = NULL;
    pthread_once(&ntfs_log_once, silence_ntfs_log);

    errno = 0;
    vol = ntfs_mount(path, NTFS_MNT_RDONLY);
    if (!vol) {
        int e = errno ? errno : EIO;
        if (e == EINVAL)
            set_error(err, e,
                      "no valid NTFS boot sector or volume (ntfs_mount: %s)",
                      strerror(e));
        else
            set_error(err, e, "ntfs_mount: %s", strerror(e));
        return -1;
    }

    fs = calloc(1, sizeof(*fs));
    if (!fs) {
        set_error(err, ENOMEM, "cannot allocate a pcs_fs: %s",
                  strerror(ENOMEM));
        ntfs_umount(vol, FALSE);
        return -1;
    }
    fs->kind = PCS_KIND_NTFS;
    fs->ntfs = vol;
    fs->first_mapped = 0;

    if (vol->nr_clusters <= 0 || !vol->lcnbmp_na) {
        set_error(err, PCS_ERR_BAD_GEOMETRY,
                  "NTFS volume reports %lld clusters and %s $Bitmap",
                  (long long)vol->nr_clusters,
                  vol->lcnbmp_na ? "a" : "no");
        pcs_close(fs);
        return -1;
    }
    if (fill_geometry(fs, "ntfs", (uint64_t)vol->cluster_size,
                      (uint64_t)vol->nr_clusters, path, err) != 0) {
        pcs_close(fs);
        return -1;
    }
    need = fs->info.bitmap_len;
    if (vol->lcnbmp_na->data_size < 0 ||
        (uint64_t)vol->lcnbmp_na->data_size < need) {
        set_error(err, PCS_ERR_SHORT_BITMAP,
                  "$Bitmap holds %lld bytes but %llu clusters need %llu",
                  (long long)vol->lcnbmp_na->data_size,
                  (unsigned long long)fs->info.total_blocks,
                  (unsigned long long)need);
        pcs_close(fs);
        return -1;
    }

    if (walk_bitmap(fs, ntfs_fetch, NULL, &used, err) != 0) {
        pcs_close(fs);
        return -1;
    }
    fs->info.used_blocks = used;
    *out = fs;
    return 0;
}

/*
 * Counts the clusters of [lcn, lcn + len) that $Bitmap marks free, and the
 * clear bits of $Bitmap past the last cluster when lcn == nr_clusters.
 */
static int ntfs_count_free(pcs_fs *fs, uint64_t lcn, uint64_t len,
                           uint64_t *nfree, pcs_error *err)
{
    uint8_t tmp[4096];
    uint64_t done = 0;

    *nfree = 0;
    while (done < len) {
        const uint64_t at = lcn + done;
        const uint64_t byte = at / 8;
        uint64_t bits = len - done;
        uint64_t i;
        s64 got;

        if (bits > (sizeof(tmp) - 1) * 8)
            bits = (sizeof(tmp) - 1) * 8;
        got = ntfs_attr_pread(fs->ntfs->lcnbmp_na, (s64)byte,
                              (s64)((at % 8 + bits + 7) / 8), tmp);
        if (got <= 0) {
            int e = got < 0 ? errno : EIO;
            set_error(err, e, "ntfs_attr_pread($Bitmap at byte %llu): %s",
                      (unsigned long long)byte, strerror(e));
            return -1;
        }
        if ((uint64_t)got * 8 < at % 8 + bits)
            bits = (uint64_t)got * 8 - at % 8;
        for (i = 0; i < bits; i++) {
            const uint64_t b = at % 8 + i;
            if (!(tmp[b / 8] & (1u << (b % 8))))
                (*nfree)++;
        }
        done += bits;
    }
    return 0;
}

/* Checks that every cluster of a system file's data is marked used: adds a
 * reason naming the file otherwise. */
static int ntfs_check_runs(pcs_fs *fs, ntfs_attr *na, const char *name,
                           int *n, pcs_error *err)
{
    runlist_element *rl;
    uint64_t nfree = 0, total = 0;

    if (!na)
        return 0;
    if (ntfs_attr_map_whole_runlist(na) != 0) {
        int e = errno ? errno : EIO;
        set_error(err, e, "cannot map the runlist of %s: %s", name,
                  strerror(e));
        return -1;
    }
    for (rl = na->rl; rl && rl->length; rl++) {
        uint64_t f = 0;
        if (rl->lcn < 0)
            continue;
        if ((uint64_t)rl->lcn + (uint64_t)rl->length >
            fs->info.total_blocks) {
            add_reason(err, n, "%s has clusters past the end of the volume",
                       name);
            return 0;
        }
        if (ntfs_count_free(fs, (uint64_t)rl->lcn, (uint64_t)rl->length, &f,
                            err) != 0)
            return -1;
        nfree += f;
        total += (uint64_t)rl->length;
    }
    if (nfree)
        add_reason(err, n, "$Bitmap marks %llu of the %llu clusters of %s "
                           "free",
                   (unsigned long long)nfree, (unsigned long long)total, name);
    return 0;
}

static int ntfs_check(pcs_fs *fs, pcs_error *err)
{
    ntfs_volume *vol = fs->ntfs;
    const uint64_t clusters = fs->info.total_blocks;
    const uint64_t pad_bits =
        (uint64_t)vol->lcnbmp_na->data_size * 8 - clusters;
    uint64_t pad_free = 0, boot_free = 0;
    int n = 0;

    if (vol->flags & VOLUME_IS_DIRTY)
        add_reason(err, &n, "the volume is marked dirty (a check is "
                            "scheduled, or it was not shut down cleanly)");
    /* NTFS stores no free count: libntfs-3g counts $Bitmap's clear bits,
     * its padding past the last cluster included, with its own reads. */
    if (ntfs_volume_get_free_space(vol) != 0 || vol->free_clusters < 0) {
        int e = errno ? errno : EIO;
        set_error(err, e, "ntfs_volume_get_free_space: %s", strerror(e));
        return -1;
    }
    if (pad_bits && ntfs_count_free(fs, clusters, pad_bits, &pad_free, err))
        return -1;
    if ((uint64_t)vol->free_clusters != clusters - fs->info.used_blocks +
                                            pad_free)
        add_reason(err, &n, "libntfs-3g counts %lld free clusters but the "
                            "bitmap walk %llu (+%llu clear padding bits)",
                   (long long)vol->free_clusters,
                   (unsigned long long)(clusters - fs->info.used_blocks),
                   (unsigned long long)pad_free);
    if (ntfs_count_free(fs, 0, 1, &boot_free, err) != 0)
        return -1;
    if (boot_free)
        add_reason(err, &n, "$Bitmap marks the boot sector's cluster free");
    if (ntfs_check_runs(fs, vol->mft_na, "$MFT", &n, err) != 0 ||
        ntfs_check_runs(fs, vol->mftmirr_na, "$MFTMirr", &n, err) != 0 ||
        ntfs_check_runs(fs, vol->lcnbmp_na, "$Bitmap", &n, err) != 0 ||
        ntfs_check_runs(fs, vol->mftbmp_na, "$MFT's bitmap", &n, err) != 0)
        return -1;
    if (n)
        return -1;
    return 0;
}

int pcs_ntfs_supported(void)
{
    return 1;
}

#else /* !PCS_HAVE_NTFS */

int pcs_open_ntfs(const char *path, pcs_fs **out, pcs_error *err)
{
    (void)path;
    clear_error(err);
    if (out)
        *out = NULL;
    set_error(err, PCS_ERR_NOT_COMPILED,
              "NTFS support not compiled in: rebuild partclone-sys with "
              "feature ntfs (needs ntfs-3g-dev)");
    return -1;
}

int pcs_ntfs_supported(void)
{
    return 0;
}

#endif /* PCS_HAVE_NTFS */

/* ------------------------------------------------------------------ */
/* common entry points                                                */
/* ------------------------------------------------------------------ */

int pcs_check(pcs_fs *fs, pcs_error *err)
{
    clear_error(err);
    if (check_handle(fs, err) != 0)
        return -1;
    switch (fs->kind) {
    case PCS_KIND_EXT:
        return ext_check(fs, err);
#ifdef PCS_HAVE_NTFS
    case PCS_KIND_NTFS:
        return ntfs_check(fs, err);
#endif
    default:
        set_error(err, PCS_ERR_INVALID_ARGUMENT, "invalid pcs_fs handle");
        return -1;
    }
}

int pcs_get_info(const pcs_fs *fs, pcs_info *info)
{
    if (check_handle(fs, NULL) != 0 || !info)
        return -1;
    *info = fs->info;
    return 0;
}

int pcs_fill_bitmap(pcs_fs *fs, uint8_t *buf, uint64_t buflen, pcs_error *err)
{
    pcs_fetch_fn fetch = NULL;
    uint64_t used = 0;

    clear_error(err);
    if (check_handle(fs, err) != 0)
        return -1;
    if (!buf) {
        set_error(err, PCS_ERR_INVALID_ARGUMENT,
                  "pcs_fill_bitmap: buf must not be NULL");
        return -1;
    }
    if (buflen < fs->info.bitmap_len) {
        set_error(err, PCS_ERR_BUFFER_TOO_SMALL,
                  "bitmap buffer holds %llu bytes, %llu needed",
                  (unsigned long long)buflen,
                  (unsigned long long)fs->info.bitmap_len);
        return -1;
    }
    switch (fs->kind) {
    case PCS_KIND_EXT:
        fetch = ext_fetch;
        break;
#ifdef PCS_HAVE_NTFS
    case PCS_KIND_NTFS:
        fetch = ntfs_fetch;
        break;
#endif
    default:
        set_error(err, PCS_ERR_INVALID_ARGUMENT, "invalid pcs_fs handle");
        return -1;
    }

    memset(buf, 0, fs->info.bitmap_len);
    if (walk_bitmap(fs, fetch, buf, &used, err) != 0)
        return -1;
    if (used != fs->info.used_blocks) {
        set_error(err, PCS_ERR_SHORT_BITMAP,
                  "bitmap changed while reading: %llu used blocks at open, "
                  "%llu now",
                  (unsigned long long)fs->info.used_blocks,
                  (unsigned long long)used);
        return -1;
    }
    return 0;
}

void pcs_close(pcs_fs *fs)
{
    if (!fs)
        return;
    if (fs->ext)
        ext2fs_close_free(&fs->ext);
#ifdef PCS_HAVE_NTFS
    if (fs->ntfs) {
        ntfs_umount(fs->ntfs, FALSE);
        fs->ntfs = NULL;
    }
#endif
    fs->kind = 0;
    free(fs);
}
