package tlog

import (
	"bytes"
	"cmp"
	"context"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"

	"github.com/transparency-dev/formats/log"
	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/rfc6962"
	"github.com/transparency-dev/tessera/api/layout"
	"github.com/transparency-dev/tessera/client"
	"golang.org/x/mod/sumdb/note"
)

// Fetcher reads a log's files. Tessera's client.FileFetcher (a directory)
// and client.HTTPFetcher (a URL, such as the ops listener's /audit-log/)
// are Fetchers.
type Fetcher interface {
	ReadCheckpoint(ctx context.Context) ([]byte, error)
	ReadTile(ctx context.Context, level, index uint64, p uint8) ([]byte, error)
	ReadEntryBundle(ctx context.Context, index uint64, p uint8) ([]byte, error)
}

// Report is what Verify established.
type Report struct {
	// Size is the number of entries the latest checkpoint commits to,
	// every one of them read and hashed.
	Size uint64
	// Root is the tree's root hash at Size.
	Root []byte
	// Extended is how many earlier checkpoints the log was shown to extend.
	Extended int
}

// Verify checks the log f reads, offline: the latest checkpoint is signed
// by v; every entry hashes to the leaf hash the log's tiles hold for it
// (the first that does not is named: changed, or removed and the rest
// shifted); the entries make the checkpoint's root; and each of the
// earlier checkpoints (signed by v, as a witness or the log's HistoryDir
// kept them) is the root of the log's first entries at its size, which is
// what a consistency proof between the two would show. each, when set,
// sees every entry in order.
func Verify(ctx context.Context, f Fetcher, v note.Verifier, history [][]byte, each func(index uint64, entry []byte) error) (Report, error) {
	raw, err := f.ReadCheckpoint(ctx)
	if err != nil {
		return Report{}, fmt.Errorf("read the checkpoint: %w", err)
	}
	cp, _, _, err := log.ParseCheckpoint(raw, v.Name(), v)
	if err != nil {
		return Report{}, fmt.Errorf("the latest checkpoint does not verify with key %q: %w", v.Name(), err)
	}
	type earlier struct {
		size uint64
		root []byte
	}
	var olds []earlier
	for i, h := range history {
		c, _, _, err := log.ParseCheckpoint(h, v.Name(), v)
		if err != nil {
			return Report{}, fmt.Errorf("earlier checkpoint %d does not verify with key %q: %w", i+1, v.Name(), err)
		}
		if c.Size > cp.Size {
			return Report{}, fmt.Errorf("an earlier checkpoint commits to %d entries, the log's latest to %d: the log was cut back or replaced", c.Size, cp.Size)
		}
		olds = append(olds, earlier{c.Size, c.Hash})
	}
	slices.SortFunc(olds, func(a, b earlier) int { return cmp.Compare(a.size, b.size) })

	rf := compact.RangeFactory{Hash: rfc6962.DefaultHasher.HashChildren}
	tree := rf.NewEmptyRange(0)
	next := 0 // olds[next] is the next earlier checkpoint to compare
	checkEarlier := func() error {
		for next < len(olds) && olds[next].size == tree.End() {
			root, err := rootOf(tree)
			if err != nil {
				return err
			}
			if !bytes.Equal(root, olds[next].root) {
				return fmt.Errorf("the checkpoint of %d entries (root %s) is not the root of this log's first %d entries (%s): the log was rewritten after that checkpoint was published",
					olds[next].size, hex.EncodeToString(olds[next].root), olds[next].size, hex.EncodeToString(root))
			}
			next++
		}
		return nil
	}
	if err := checkEarlier(); err != nil {
		return Report{}, err
	}
	for bundle := uint64(0); bundle*layout.EntryBundleWidth < cp.Size; bundle++ {
		first := bundle * layout.EntryBundleWidth
		n := min(uint64(layout.EntryBundleWidth), cp.Size-first)
		recorded, err := client.FetchLeafHashes(ctx, f.ReadTile, first, n, cp.Size)
		if err != nil {
			return Report{}, fmt.Errorf("entries %d to %d: read the log's hashes: %w", first, first+n-1, err)
		}
		eb, err := client.GetEntryBundle(ctx, f.ReadEntryBundle, bundle, cp.Size)
		if err != nil {
			return Report{}, fmt.Errorf("entries %d to %d: %w", first, first+n-1, err)
		}
		for j := uint64(0); j < n; j++ {
			index := first + j
			if j >= uint64(len(eb.Entries)) {
				return Report{}, fmt.Errorf("entry %d: missing (the checkpoint commits to %d entries): removed", index, cp.Size)
			}
			h := rfc6962.DefaultHasher.HashLeaf(eb.Entries[j])
			if !bytes.Equal(h, recorded[j]) {
				return Report{}, fmt.Errorf("entry %d: does not hash to what the log recorded for it: changed, or an entry before it removed", index)
			}
			if err := tree.Append(h, nil); err != nil {
				return Report{}, err
			}
			if err := checkEarlier(); err != nil {
				return Report{}, err
			}
			if each != nil {
				if err := each(index, eb.Entries[j]); err != nil {
					return Report{}, err
				}
			}
		}
	}
	root, err := rootOf(tree)
	if err != nil {
		return Report{}, err
	}
	if !bytes.Equal(root, cp.Hash) {
		return Report{}, fmt.Errorf("the %d entries make root %s, the signed checkpoint says %s: the log's hashes were rewritten", cp.Size, hex.EncodeToString(root), hex.EncodeToString(cp.Hash))
	}
	return Report{Size: cp.Size, Root: root, Extended: len(olds)}, nil
}

// rootOf returns the root of tree, RFC 6962's empty-tree hash for none.
func rootOf(tree *compact.Range) ([]byte, error) {
	if tree.End() == 0 {
		return rfc6962.DefaultHasher.EmptyRoot(), nil
	}
	return tree.GetRootHash(nil)
}

// NewVerifier parses a note verifier key (PublicKeyFile's content).
func NewVerifier(vkey string) (note.Verifier, error) {
	v, err := note.NewVerifier(strings.TrimSpace(vkey))
	if err != nil {
		return nil, fmt.Errorf("not a note verifier key: %w", err)
	}
	return v, nil
}
