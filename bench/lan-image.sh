# bench/lan-image.sh - the source images of bench/lan.sh (sourced by it; not run on its own).
#
# --image synthetic  ext4, about half of it free, the used part files of random data (the
#                    bench's image before --image existed)
# --image random     no file system: --size MB of random bytes, every byte used (imager --fs dd)
# --image debian     a debootstrap'ed Debian minbase (bookworm, from deb.debian.org, Debian's own
#                    debootstrap) plus DEBIAN_INCLUDE, on ext4 (mkfs.ext4 -d), about half free.
#                    Built once and cached in $IMAGE_CACHE, keyed by its parameters (suite,
#                    variant, packages, mirror): the file name carries a hash of them.
#
# Every make_image_* sets IMG (the source), DEVSIZE (its size: the receivers' target size),
# IMG_FS (ext4|raw: which baseline pipe applies) and IMG_DESC (one line for the report).
# make_image then makes the manifest and the packed used data (NAME, MANIFEST, PACKED, S,
# SRC_HASH, TOKEN, IDEAL) the same way for all three.

IMAGE_KIND=synthetic
IMAGE_CACHE=/var/cache/blockswarm-bench
DEBIAN_SUITE=bookworm
DEBIAN_MIRROR=http://deb.debian.org/debian
# minbase alone is ~200 MB used; these bring the image near the issue's 268 MB used
DEBIAN_INCLUDE="systemd-sysv,iproute2,openssh-server,curl,ca-certificates,less,vim-tiny,locales,kmod,udev"

img_fs_flag() {     # imager --fs for this image
    [ "$IMG_FS" = raw ] && echo dd || echo auto
}

make_image_synthetic() {
    local d=$TMP/src-files remaining k sz overhead
    IMG=$TMP/src.img
    IMG_FS=ext4
    DEVSIZE=$(( (SIZE * 1000000 * 2 / 1048576 + 64) * 1048576 ))   # about half of it free
    # metadata (journal, inode tables, bitmaps) of an empty fs of this size counts as used
    truncate -s "$DEVSIZE" "$IMG"
    mkfs.ext4 -q -F -b 4096 "$IMG" >/dev/null || return 1
    overhead=$("$BIN/imager" "$IMG" -o /dev/null 2>&1 | grep -o '[0-9]* used bytes' | cut -d' ' -f1)
    rm -f "$IMG"
    mkdir -p "$d"
    remaining=$(( SIZE * 1000000 - ${overhead:-24000000} ))
    [ $remaining -lt 1000000 ] && remaining=1000000
    k=0
    while [ $remaining -gt 0 ] && [ $k -lt 1000 ]; do
        sz=$(( remaining > 16777216 ? 16777216 : remaining ))
        head -c "$sz" /dev/urandom >"$d/f$k"
        remaining=$((remaining - sz)); k=$((k + 1))
    done
    truncate -s "$DEVSIZE" "$IMG"
    mkfs.ext4 -q -F -b 4096 -d "$d" "$IMG" >/dev/null || return 1
    rm -rf "$d"
    IMG_DESC="synthetic: ext4 with files of random data (--size $SIZE MB used), about half free"
}

make_image_random() {
    IMG=$TMP/src.img
    IMG_FS=raw
    DEVSIZE=$(( SIZE * 1000000 / 4096 * 4096 ))
    head -c "$DEVSIZE" /dev/urandom >"$IMG" || return 1
    IMG_DESC="random: $DEVSIZE bytes of random data, no file system (imager --fs dd: every byte used)"
}

# The cached Debian image: $IMAGE_CACHE/debian-SUITE-minbase-KEY.img (KEY = a hash of the
# parameters). Built under a lock, into a temporary name, renamed when complete: a run killed
# half-way leaves no image that looks finished.
make_image_debian() {
    local key base root used
    command -v debootstrap >/dev/null || { echo "lan.sh: --image debian needs debootstrap (apt-get install -y debootstrap)" >&2; return 1; }
    key=$(printf '%s\n' "$DEBIAN_SUITE" minbase "$DEBIAN_INCLUDE" "$DEBIAN_MIRROR" ext4-4096-2x+64M v1 | sha256sum | cut -c1-12)
    base=$IMAGE_CACHE/debian-$DEBIAN_SUITE-minbase-$key
    mkdir -p "$IMAGE_CACHE" || return 1
    (
        flock -w 1800 9 || { echo "lan.sh: $base.lock held for 30 min" >&2; exit 1; }
        [ -s "$base.img" ] && exit 0
        root=$base.root
        rm -rf "$root" "$base.img.part"
        echo "lan.sh: building $base.img (debootstrap --variant=minbase $DEBIAN_SUITE from $DEBIAN_MIRROR; once, then cached)" >&2
        timeout 1800 debootstrap --variant=minbase --include="$DEBIAN_INCLUDE" "$DEBIAN_SUITE" "$root" "$DEBIAN_MIRROR" \
            >"$base.debootstrap.log" 2>&1 || { echo "lan.sh: debootstrap failed, see $base.debootstrap.log" >&2; tail -5 "$base.debootstrap.log" >&2; exit 1; }
        rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*_Packages
        used=$(du -sb "$root" | cut -f1)
        local devsize=$(( (used * 2 / 1048576 + 64) * 1048576 ))
        truncate -s "$devsize" "$base.img.part" &&
            mkfs.ext4 -q -F -b 4096 -d "$root" "$base.img.part" >/dev/null &&
            e2fsck -fn "$base.img.part" >/dev/null 2>&1 || { echo "lan.sh: mkfs.ext4 -d of $root failed" >&2; exit 1; }
        {
            echo "suite $DEBIAN_SUITE variant minbase mirror $DEBIAN_MIRROR"
            echo "include $DEBIAN_INCLUDE"
            echo "root files $used bytes (du -sb), ext4 $devsize bytes"
            echo "packages $(chroot "$root" dpkg-query -W -f '.\n' 2>/dev/null | wc -l)"
            echo "built $(date -u +%FT%TZ)"
        } >"$base.info"
        mv "$base.img.part" "$base.img" && rm -rf "$root"
    ) 9>"$base.lock" || return 1
    IMG=$TMP/src.img
    IMG_FS=ext4
    cp --sparse=always "$base.img" "$IMG" || return 1    # the seeder reads it from tmpfs, as the others
    DEVSIZE=$(stat -c %s "$IMG")
    IMG_DESC="debian: $(sed -n 1p "$base.info"), $(sed -n 4p "$base.info"), include $DEBIAN_INCLUDE; ext4 (cached $base.img)"
}

make_image() {
    case $IMAGE_KIND in
        synthetic) make_image_synthetic ;;
        random) make_image_random ;;
        debian) make_image_debian ;;
        *) echo "lan.sh: --image synthetic|random|debian" >&2; return 1 ;;
    esac || return 1
    NAME=src.img.packed
    # The seeder's deployment token (every URL carries it).
    TOKEN=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
    MANIFEST=$TMP/src.torrent
    "$BIN/imager" "$IMG" --fs "$(img_fs_flag)" -o "$MANIFEST" --piece-size "$PIECE" --save "$TMP/packed" 2>"$LOGS/imager.log" || return 1
    PACKED=$TMP/packed/$NAME
    S=$(stat -c %s "$PACKED")
    SRC_HASH=$(grep -o 'infohash [0-9a-f]*' "$LOGS/imager.log" | head -1 | cut -d' ' -f2)
    [ -n "$SRC_HASH" ] || return 1
    IDEAL=$(calc "$S * 8 / ($RATE * 1e6)")
    IDEAL=$(printf '%.1f' "$IDEAL")
}
