package conformance

// The metadata suite: containerd 1.6's own tests of leases, images, namespaces and garbage
// collection (metadata/leases_test.go, content_test.go, images_test.go, namespaces_test.go,
// db_test.go), ported to run over the gRPC API through containerd's Go client, exactly as
// containerd's tooling drives a daemon. Only behaviour a client can observe is ported:
// snapshots and containers are left out, but lease resources naming snapshots are kept.
//
// Every test works in a namespace of its own and empties and deletes it when it ends. The
// server collects garbage whenever it likes (containerd does after any deletion), so every
// blob a test needs is held by a lease until the test means to let it go.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/content"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/images"
	"github.com/containerd/containerd/leases"
	"github.com/containerd/containerd/namespaces"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// The labels containerd's garbage collector reads (metadata/gc.go).
const (
	gcExpireLabel     = "containerd.io/gc.expire"
	gcFlatLabel       = "containerd.io/gc.flat"
	gcRootLabel       = "containerd.io/gc.root"
	gcRefContentLabel = "containerd.io/gc.ref.content"
)

// session is one test's connection: the stores of containerd's client, and a context in a
// namespace no other test uses.
type session struct {
	ctx        context.Context
	namespace  string
	leases     leases.Manager
	images     images.Store
	content    content.Store
	namespaces namespaces.Store
}

// newSession connects as `ctr` does (containerd.New without a default namespace makes no
// call) and owns a fresh namespace, emptied and deleted when the test ends.
func newSession(t *testing.T) *session {
	t.Helper()
	client, err := containerd.New(serverAddress(t), containerd.WithTimeout(dialTimeout))
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	s := &session{
		leases:     client.LeasesService(),
		images:     client.ImageService(),
		content:    client.ContentStore(),
		namespaces: client.NamespaceService(),
	}
	t.Cleanup(func() { client.Close() })
	s.namespace = s.newNamespace(t)
	s.ctx = namespaces.WithNamespace(context.Background(), s.namespace)
	return s
}

var metadataNamespaces int64

// newNamespace names a namespace no other test, and no earlier run against the same
// server, uses; whatever is left in it is removed, and the namespace deleted, when t ends.
func (s *session) newNamespace(t *testing.T) string {
	name := fmt.Sprintf("metadata-%d-%d-%d",
		os.Getpid(), time.Now().UnixNano(), atomic.AddInt64(&metadataNamespaces, 1))
	t.Cleanup(func() {
		if err := s.removeNamespace(name); err != nil {
			t.Errorf("clean up namespace %s: %v", name, err)
		}
	})
	return name
}

// in is the session's context moved to another namespace.
func (s *session) in(namespace string) context.Context {
	return namespaces.WithNamespace(context.Background(), namespace)
}

// removeNamespace deletes everything in a namespace, then the namespace. What the server
// does not implement it cannot hold, and a namespace never written to does not exist.
func (s *session) removeNamespace(name string) error {
	ctx := s.in(name)
	ignore := func(err error) error {
		if errdefs.IsNotFound(err) || errdefs.IsNotImplemented(err) {
			return nil
		}
		return err
	}

	imgs, err := s.images.List(ctx)
	if ignore(err) != nil {
		return fmt.Errorf("list images: %w", err)
	}
	for _, img := range imgs {
		if err := ignore(s.images.Delete(ctx, img.Name)); err != nil {
			return fmt.Errorf("delete image %s: %w", img.Name, err)
		}
	}
	ls, err := s.leases.List(ctx)
	if ignore(err) != nil {
		return fmt.Errorf("list leases: %w", err)
	}
	for _, l := range ls {
		if err := ignore(s.leases.Delete(ctx, l)); err != nil {
			return fmt.Errorf("delete lease %s: %w", l.ID, err)
		}
	}
	var blobs []digest.Digest
	if err := s.content.Walk(ctx, func(info content.Info) error {
		blobs = append(blobs, info.Digest)
		return nil
	}); ignore(err) != nil {
		return fmt.Errorf("list content: %w", err)
	}
	for _, d := range blobs {
		if err := ignore(s.content.Delete(ctx, d)); err != nil {
			return fmt.Errorf("delete content %s: %w", d, err)
		}
	}
	statuses, err := s.content.ListStatuses(ctx)
	if ignore(err) != nil {
		return fmt.Errorf("list ingests: %w", err)
	}
	for _, st := range statuses {
		if err := ignore(s.abort(ctx, st.Ref)); err != nil {
			return fmt.Errorf("abort ingest %s: %w", st.Ref, err)
		}
	}
	if err := ignore(s.namespaces.Delete(context.Background(), name)); err != nil {
		return fmt.Errorf("delete namespace: %w", err)
	}
	return nil
}

// createLease creates lease `id` and returns a context that writes under it (the
// `containerd-lease` header).
func (s *session) createLease(t *testing.T, ctx context.Context, id string, opts ...leases.Opt) (leases.Lease, context.Context) {
	t.Helper()
	l, err := s.leases.Create(ctx, append([]leases.Opt{leases.WithID(id)}, opts...)...)
	if err != nil {
		t.Fatalf("create lease %s: %v", id, err)
	}
	return l, leases.WithLease(ctx, id)
}

// testBlob is a named blob of ctx's namespace: its bytes carry the namespace, so no two
// tests share content through containerd's shared content policy.
func testBlob(ctx context.Context, name string) ([]byte, ocispec.Descriptor) {
	ns, _ := namespaces.Namespace(ctx)
	data := []byte(fmt.Sprintf("%s/%s\n", ns, name))
	return data, ocispec.Descriptor{
		MediaType: "application/octet-stream",
		Digest:    digest.FromBytes(data),
		Size:      int64(len(data)),
	}
}

// writeBlob writes and commits blob `name` with `labels`, under ctx's lease if it has one.
func (s *session) writeBlob(t *testing.T, ctx context.Context, name string, labels map[string]string) ocispec.Descriptor {
	t.Helper()
	data, desc := testBlob(ctx, name)
	if err := content.WriteBlob(ctx, s.content, "ref-"+name, bytes.NewReader(data), desc,
		content.WithLabels(labels)); err != nil {
		t.Fatalf("write blob %s: %v", name, err)
	}
	return desc
}

// closeTimeout bounds the wait for the server to finish closing a writer.
const closeTimeout = 5 * time.Second

// abort aborts ingest `ref`, whose writer the test has just closed. Closing a remote writer
// only half-closes its stream; the server closes the writer after that, and an Abort that
// overtakes the close can fail: containerd's local store answers Unknown ("directory not
// empty") while the closing writer rewrites its timestamp file, and a store that locks the
// ref answers Unavailable. Either is retried for a while, as content.OpenWriter retries a
// ref that is still locked.
func (s *session) abort(ctx context.Context, ref string) error {
	deadline := time.Now().Add(closeTimeout)
	for {
		err := s.content.Abort(ctx, ref)
		closing := errors.Is(err, errdefs.ErrUnknown) || errdefs.IsUnavailable(err)
		if !closing || time.Now().After(deadline) {
			return err
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// checkError fails unless err is of class want (errors.Is, as errdefs.Is* do), or nil
// when want is nil.
func checkError(t *testing.T, what string, err, want error) {
	t.Helper()
	if want == nil {
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		return
	}
	if !errors.Is(err, want) {
		t.Fatalf("%s: got error %v, want one of class %q", what, err, want)
	}
}

// holds says whether lease `lease` of ctx's namespace holds resource r.
func (s *session) holds(t *testing.T, ctx context.Context, lease string, r leases.Resource) bool {
	t.Helper()
	resources, err := s.leases.ListResources(ctx, leases.Lease{ID: lease})
	if err != nil {
		t.Fatalf("list resources of lease %s: %v", lease, err)
	}
	for _, got := range resources {
		if got == r {
			return true
		}
	}
	return false
}

func leaseIDs(ls []leases.Lease) []string {
	ids := make([]string, 0, len(ls))
	for _, l := range ls {
		ids = append(ids, l.ID)
	}
	sort.Strings(ids)
	return ids
}

func sameStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// --- leases (metadata/leases_test.go) ---

func TestLeases(t *testing.T) {
	s := newSession(t)

	testCases := []struct {
		ID        string
		CreateErr error
		DeleteErr error
	}{
		{ID: "tx1"},
		{ID: "tx1", CreateErr: errdefs.ErrAlreadyExists, DeleteErr: errdefs.ErrNotFound},
		{ID: "tx2"},
	}

	var created []leases.Lease
	for _, tc := range testCases {
		lease, err := s.leases.Create(s.ctx, leases.WithID(tc.ID))
		checkError(t, "create "+tc.ID, err, tc.CreateErr)
		if err == nil {
			created = append(created, lease)
		}
	}

	listed, err := s.leases.List(s.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(listed) != len(created) {
		t.Fatalf("expected %d leases, got %d: %v", len(created), len(listed), listed)
	}
	for i := range listed {
		if listed[i].ID != created[i].ID {
			t.Fatalf("expected lease ID %s, got %s", created[i].ID, listed[i].ID)
		}
		if !listed[i].CreatedAt.Equal(created[i].CreatedAt) {
			t.Fatalf("expected lease %s created at %s, got %s",
				created[i].ID, created[i].CreatedAt, listed[i].CreatedAt)
		}
	}

	for _, tc := range testCases {
		err := s.leases.Delete(s.ctx, leases.Lease{ID: tc.ID})
		checkError(t, "delete "+tc.ID, err, tc.DeleteErr)
	}

	listed, err = s.leases.List(s.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(listed) > 0 {
		t.Fatalf("expected no leases, found %d: %v", len(listed), listed)
	}
}

// An empty id asks the server for one (`ctr leases create` without --id).
func TestLeasesGeneratedID(t *testing.T) {
	s := newSession(t)

	lease, err := s.leases.Create(s.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if lease.ID == "" {
		t.Fatal("the server generated no lease id")
	}
	listed, err := s.leases.List(s.ctx, "id=="+lease.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(listed) != 1 {
		t.Fatalf("lease %s is not listed: %v", lease.ID, listed)
	}
}

func TestLeasesList(t *testing.T) {
	s := newSession(t)

	testset := [][]leases.Opt{
		{
			leases.WithID("lease1"),
			leases.WithLabels(map[string]string{"label1": "value1", "label3": "other"}),
		},
		{
			leases.WithID("lease2"),
			leases.WithLabels(map[string]string{"label1": "value1", "label2": "", "label3": "other"}),
		},
		{
			leases.WithID("lease3"),
			leases.WithLabels(map[string]string{"label1": "value2", "label2": "something"}),
		},
	}
	for _, opts := range testset {
		if _, err := s.leases.Create(s.ctx, opts...); err != nil {
			t.Fatal(err)
		}
	}

	for _, testcase := range []struct {
		name     string
		filters  []string
		expected []string
		err      error
	}{
		{name: "All", filters: []string{}, expected: []string{"lease1", "lease2", "lease3"}},
		{name: "ID", filters: []string{"id==lease1"}, expected: []string{"lease1"}},
		{name: "IDx2", filters: []string{"id==lease1", "id==lease2"}, expected: []string{"lease1", "lease2"}},
		{name: "Label1", filters: []string{"labels.label1"}, expected: []string{"lease1", "lease2", "lease3"}},
		{name: "Label1value1", filters: []string{"labels.label1==value1"}, expected: []string{"lease1", "lease2"}},
		{name: "Label1value2", filters: []string{"labels.label1==value2"}, expected: []string{"lease3"}},
		// lease2's empty label2 was dropped when the lease was created.
		{name: "Label2", filters: []string{"labels.label2"}, expected: []string{"lease3"}},
		{name: "Label3", filters: []string{"labels.label2", "labels.label3"}, expected: []string{"lease1", "lease2", "lease3"}},
		// Not in containerd's table: a filter that does not parse.
		{name: "BadFilter", filters: []string{"labels.label1=="}, err: errdefs.ErrInvalidArgument},
	} {
		t.Run(testcase.name, func(t *testing.T) {
			results, err := s.leases.List(s.ctx, testcase.filters...)
			checkError(t, "list", err, testcase.err)
			if testcase.err != nil {
				return
			}
			if got := leaseIDs(results); !sameStrings(got, testcase.expected) {
				t.Errorf("listed %v, want %v", got, testcase.expected)
			}
		})
	}

	for _, opts := range testset {
		var lease leases.Lease
		for _, opt := range opts {
			if err := opt(&lease); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.leases.Delete(s.ctx, lease); err != nil {
			t.Fatal(err)
		}
		if err := s.leases.Delete(s.ctx, lease); err == nil {
			t.Fatalf("expected error deleting non-existent lease %s", lease.ID)
		} else if !errdefs.IsNotFound(err) {
			t.Fatalf("unexpected error: %s", err)
		}
	}
}

func TestLeaseResource(t *testing.T) {
	s := newSession(t)

	var (
		lease          = leases.Lease{ID: "l1"}
		snapshotterKey = "RstMI3X8vguKoPFkmIStZ5fQFI7F1L0o"
	)
	if _, err := s.leases.Create(s.ctx, leases.WithID(lease.ID)); err != nil {
		t.Fatal(err)
	}

	testCases := []struct {
		name     string
		lease    leases.Lease
		resource leases.Resource
		err      error
	}{
		{
			name:     "Content",
			lease:    lease,
			resource: leases.Resource{ID: "sha256:29f5d56d12684887bdfa50dcd29fc31eea4aaf4ad3bec43daf19026a7ce69912", Type: "content"},
		},
		{
			name:     "Ingest",
			lease:    lease,
			resource: leases.Resource{ID: "d2UdcINOwrBTQG9kS8rySAM3eMNBSojH", Type: "ingests"},
		},
		{
			// Adding a resource the lease already holds is allowed.
			name:     "IngestAgain",
			lease:    lease,
			resource: leases.Resource{ID: "d2UdcINOwrBTQG9kS8rySAM3eMNBSojH", Type: "ingests"},
		},
		{
			name:     "Lease",
			lease:    lease,
			resource: leases.Resource{ID: "xCAV3F6PddlXitbtby0Vo23Qof6RTWpG", Type: "leases"},
			err:      errdefs.ErrNotImplemented,
		},
		{
			name:     "Container",
			lease:    lease,
			resource: leases.Resource{ID: "05O9ljptPu5Qq9kZGOacEfymBwQFM8ZH", Type: "containers"},
			err:      errdefs.ErrNotImplemented,
		},
		{
			name:     "Image",
			lease:    lease,
			resource: leases.Resource{ID: "qBUHpWBn03YaCt9cL3PPGKWoxBqTlLfu", Type: "image"},
			err:      errdefs.ErrNotImplemented,
		},
		{
			name:     "SnapshotsWithoutSnapshotter",
			lease:    lease,
			resource: leases.Resource{ID: "HMemOhlygombYhkhHhAZj5aRbDy2a3z2", Type: "snapshots"},
			err:      errdefs.ErrInvalidArgument,
		},
		{
			name:     "Snapshot",
			lease:    lease,
			resource: leases.Resource{ID: snapshotterKey, Type: "snapshots/overlayfs"},
		},
		{
			name:     "SnapshotsNestedType",
			lease:    lease,
			resource: leases.Resource{ID: "HMemOhlygombYhkhHhAZj5aRbDy2a3z2", Type: "snapshots/overlayfs/type1"},
			err:      errdefs.ErrInvalidArgument,
		},
		{
			name:     "MissingLease",
			lease:    leases.Lease{ID: "non-found"},
			resource: leases.Resource{ID: "HMemOhlygombYhkhHhAZj5aRbDy2a3z2", Type: "snapshots/overlayfs"},
			err:      errdefs.ErrNotFound,
		},
		// Not in containerd's table.
		{
			name:     "ContentNotADigest",
			lease:    lease,
			resource: leases.Resource{ID: "not-a-digest", Type: "content"},
			err:      errdefs.ErrInvalidArgument,
		},
		{
			name:     "ContentSubtype",
			lease:    lease,
			resource: leases.Resource{ID: "sha256:29f5d56d12684887bdfa50dcd29fc31eea4aaf4ad3bec43daf19026a7ce69912", Type: "content/x"},
			err:      errdefs.ErrInvalidArgument,
		},
		{
			// The lease is looked up before the type.
			name:     "BadTypeOnMissingLease",
			lease:    leases.Lease{ID: "non-found"},
			resource: leases.Resource{ID: "x", Type: "containers"},
			err:      errdefs.ErrNotFound,
		},
	}

	added := map[leases.Resource]bool{}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			err := s.leases.AddResource(s.ctx, tc.lease, tc.resource)
			checkError(t, "add resource", err, tc.err)
			if err == nil {
				added[tc.resource] = false
			}
		})
	}

	t.Run("ListResources", func(t *testing.T) {
		got, err := s.leases.ListResources(s.ctx, lease)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(added) {
			t.Fatalf("expected %d resources, got %d: %v", len(added), len(got), got)
		}
		for _, r := range got {
			seen, ok := added[r]
			if !ok {
				t.Fatalf("unexpected resource %v", r)
			}
			if seen {
				t.Fatalf("duplicate resource %v", r)
			}
			added[r] = true
		}
	})

	t.Run("DeleteResource", func(t *testing.T) {
		snapshot := leases.Resource{ID: snapshotterKey, Type: "snapshots/overlayfs"}
		if err := s.leases.DeleteResource(s.ctx, lease, snapshot); err != nil {
			t.Fatal(err)
		}
		got, err := s.leases.ListResources(s.ctx, lease)
		if err != nil {
			t.Fatal(err)
		}
		if len(got)+1 != len(added) {
			t.Fatalf("expected %d resources, got %d: %v", len(added)-1, len(got), got)
		}
		// Deleting what the lease does not hold is no error.
		if err := s.leases.DeleteResource(s.ctx, lease, snapshot); err != nil {
			t.Fatalf("delete an absent resource: %v", err)
		}
	})

	t.Run("ListResourcesOfMissingLease", func(t *testing.T) {
		_, err := s.leases.ListResources(s.ctx, leases.Lease{ID: "non-found"})
		checkError(t, "list resources", err, errdefs.ErrNotFound)
	})
}

// --- writes under a lease (metadata/content_test.go) ---

func TestContentLeased(t *testing.T) {
	s := newSession(t)

	blob := []byte("any content")
	expected := digest.FromBytes(blob)
	desc := ocispec.Descriptor{Size: int64(len(blob)), Digest: expected}
	leasedContent := leases.Resource{ID: expected.String(), Type: "content"}

	_, lctx := s.createLease(t, s.ctx, "lease-1")
	if err := content.WriteBlob(lctx, s.content, "test-1", bytes.NewReader(blob), desc); err != nil {
		t.Fatal(err)
	}
	if !s.holds(t, s.ctx, "lease-1", leasedContent) {
		t.Fatal("lease-1 does not hold the content written under it")
	}
	if s.holds(t, s.ctx, "lease-1", leases.Resource{ID: "test-1", Type: "ingests"}) {
		t.Fatal("test-1 should not be leased after the write")
	}

	// Opening a writer on content that exists leases the content, then says it exists.
	_, lctx = s.createLease(t, s.ctx, "lease-2")
	if _, err := s.content.Writer(lctx, content.WithRef("test-2"), content.WithDescriptor(desc)); err == nil {
		t.Fatal("expected already exist error")
	} else if !errdefs.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	if !s.holds(t, s.ctx, "lease-2", leasedContent) {
		t.Fatal("lease-2 does not hold the existing content")
	}
	if s.holds(t, s.ctx, "lease-2", leases.Resource{ID: "test-2", Type: "ingests"}) {
		t.Fatal("test-2 should not be leased")
	}

	// Not in containerd's test: the header on Delete, and leases that do not exist.
	t.Run("WriterUnderMissingLease", func(t *testing.T) {
		missing := leases.WithLease(s.ctx, "no-such-lease")
		other := []byte("other content")
		_, err := s.content.Writer(missing, content.WithRef("test-3"),
			content.WithDescriptor(ocispec.Descriptor{Size: int64(len(other)), Digest: digest.FromBytes(other)}))
		checkError(t, "open a writer", err, errdefs.ErrNotFound)
		if _, err := s.content.Status(s.ctx, "test-3"); !errdefs.IsNotFound(err) {
			t.Fatalf("a writer refused for its lease left an ingest behind: %v", err)
		}
	})
	t.Run("WriterOnExistingContentUnderMissingLease", func(t *testing.T) {
		missing := leases.WithLease(s.ctx, "no-such-lease")
		_, err := s.content.Writer(missing, content.WithRef("test-4"), content.WithDescriptor(desc))
		checkError(t, "open a writer", err, errdefs.ErrNotFound)
	})
	t.Run("DeleteUnderLease", func(t *testing.T) {
		lctx := leases.WithLease(s.ctx, "lease-1")
		if err := s.content.Delete(lctx, expected); err != nil {
			t.Fatal(err)
		}
		if s.holds(t, s.ctx, "lease-1", leasedContent) {
			t.Fatal("lease-1 still holds the content deleted under it")
		}
	})
	t.Run("DeleteUnderMissingLease", func(t *testing.T) {
		_, lctx := s.createLease(t, s.ctx, "lease-3")
		desc := s.writeBlob(t, lctx, "deleted", nil)
		if err := s.content.Delete(leases.WithLease(s.ctx, "no-such-lease"), desc.Digest); err != nil {
			t.Fatal(err)
		}
		if _, err := s.content.Info(s.ctx, desc.Digest); !errdefs.IsNotFound(err) {
			t.Fatalf("the content is still there: %v", err)
		}
	})
}

func TestIngestLeased(t *testing.T) {
	s := newSession(t)

	blob := []byte("any content")
	expected := digest.FromBytes(blob)
	ingest := leases.Resource{ID: "test-1", Type: "ingests"}

	_, lctx := s.createLease(t, s.ctx, "lease-1")
	w, err := s.content.Writer(lctx, content.WithRef("test-1"),
		content.WithDescriptor(ocispec.Descriptor{Size: int64(len(blob)), Digest: expected}))
	if err != nil {
		t.Fatal(err)
	}
	leased := s.holds(t, s.ctx, "lease-1", ingest)
	w.Close()
	if !leased {
		t.Fatal("lease-1 does not hold the ingest opened under it")
	}

	if err := s.abort(lctx, "test-1"); err != nil {
		t.Fatal(err)
	}
	if s.holds(t, s.ctx, "lease-1", ingest) {
		t.Fatal("test-1 should not be leased after the abort")
	}

	// Not in containerd's test: an abort naming a lease that does not exist still aborts.
	t.Run("AbortUnderMissingLease", func(t *testing.T) {
		w, err := s.content.Writer(lctx, content.WithRef("test-2"))
		if err != nil {
			t.Fatal(err)
		}
		w.Close()
		if err := s.abort(leases.WithLease(s.ctx, "no-such-lease"), "test-2"); err != nil {
			t.Fatal(err)
		}
		if _, err := s.content.Status(s.ctx, "test-2"); !errdefs.IsNotFound(err) {
			t.Fatalf("the ingest is still there: %v", err)
		}
	})
}

// --- images (metadata/images_test.go) ---

func TestImagesList(t *testing.T) {
	s := newSession(t)

	testset := map[string]*images.Image{}
	for i := 0; i < 4; i++ {
		id := "image-" + fmt.Sprint(i)
		testset[id] = &images.Image{
			Name: id,
			Labels: map[string]string{
				"namelabel": id,
				"even":      fmt.Sprint(i%2 == 0),
				"odd":       fmt.Sprint(i%2 != 0),
			},
			Target: ocispec.Descriptor{
				Size:        10,
				MediaType:   "application/vnd.containerd.test",
				Digest:      digest.FromString(id),
				Annotations: map[string]string{"foo": "bar"},
			},
		}

		now := time.Now()
		result, err := s.images.Create(s.ctx, *testset[id])
		if err != nil {
			t.Fatal(err)
		}
		checkImageTimestamps(t, &result, now, true)
		testset[id].UpdatedAt, testset[id].CreatedAt = result.UpdatedAt, result.CreatedAt
		checkImagesEqual(t, &result, testset[id], "ensure that images were created as expected for list")
	}

	for _, testcase := range []struct {
		name     string
		filters  []string
		expected []string
		err      error
	}{
		{name: "FullSet", expected: []string{"image-0", "image-1", "image-2", "image-3"}},
		{
			name:     "FullSetFiltered", // the full set, because the filters are ORed
			filters:  []string{"labels.even==true", "labels.odd==true"},
			expected: []string{"image-0", "image-1", "image-2", "image-3"},
		},
		{name: "Even", filters: []string{"labels.even==true"}, expected: []string{"image-0", "image-2"}},
		{name: "Odd", filters: []string{"labels.odd==true"}, expected: []string{"image-1", "image-3"}},
		{name: "ByName", filters: []string{"name==image-0"}, expected: []string{"image-0"}},
		{
			name:     "ByNameLabelEven",
			filters:  []string{"labels.namelabel==image-0,labels.even==true"},
			expected: []string{"image-0"},
		},
		{
			name:     "ByMediaType",
			filters:  []string{"target.mediatype~=application/vnd.*"},
			expected: []string{"image-0", "image-1", "image-2", "image-3"},
		},
		// Not in containerd's table: the other fields the image adaptor knows, and a filter
		// that does not parse.
		{
			name:     "ByAnnotation",
			filters:  []string{"annotations.foo==bar"},
			expected: []string{"image-0", "image-1", "image-2", "image-3"},
		},
		{
			name:     "ByTargetDigest",
			filters:  []string{"target.digest==" + digest.FromString("image-1").String()},
			expected: []string{"image-1"},
		},
		{name: "BadFilter", filters: []string{"name=="}, err: errdefs.ErrInvalidArgument},
	} {
		t.Run(testcase.name, func(t *testing.T) {
			results, err := s.images.List(s.ctx, testcase.filters...)
			checkError(t, "list", err, testcase.err)
			if testcase.err != nil {
				return
			}
			var names []string
			for _, result := range results {
				result := result
				names = append(names, result.Name)
				if want, ok := testset[result.Name]; ok {
					checkImagesEqual(t, &result, want, "list results did not match")
				}
			}
			sort.Strings(names)
			if !sameStrings(names, testcase.expected) {
				t.Fatalf("listed %v, want %v", names, testcase.expected)
			}
		})
	}

	for id := range testset {
		if err := s.images.Delete(s.ctx, id); err != nil {
			t.Fatal(err)
		}
		if err := s.images.Delete(s.ctx, id); !errdefs.IsNotFound(err) {
			t.Fatalf("unexpected error %v", err)
		}
	}
}

func TestImagesCreateUpdateDelete(t *testing.T) {
	s := newSession(t)

	for _, testcase := range []struct {
		name       string
		original   images.Image
		createerr  error
		input      images.Image
		fieldpaths []string
		expected   images.Image
		cause      error
	}{
		{
			name:     "Touch",
			original: imageBase(),
			input: images.Image{
				Labels: map[string]string{"foo": "bar", "baz": "boo"},
				Target: ocispec.Descriptor{
					Size: 10, MediaType: "application/vnd.oci.blab",
					Annotations: map[string]string{"foo": "bar"},
				},
			},
			expected: images.Image{
				Labels: map[string]string{"foo": "bar", "baz": "boo"},
				Target: ocispec.Descriptor{
					Size: 10, MediaType: "application/vnd.oci.blab",
					Annotations: map[string]string{"foo": "bar"},
				},
			},
		},
		{
			name: "NoTarget",
			original: images.Image{
				Labels: map[string]string{"foo": "bar", "baz": "boo"},
				Target: ocispec.Descriptor{},
			},
			createerr: errdefs.ErrInvalidArgument,
		},
		{
			name:     "ReplaceLabels",
			original: imageBase(),
			input: images.Image{
				Labels: map[string]string{"for": "bar", "boo": "boo"},
				Target: ocispec.Descriptor{
					Size: 10, MediaType: "application/vnd.oci.blab",
					Annotations: map[string]string{"foo": "bar"},
				},
			},
			expected: images.Image{
				Labels: map[string]string{"for": "bar", "boo": "boo"},
				Target: ocispec.Descriptor{
					Size: 10, MediaType: "application/vnd.oci.blab",
					Annotations: map[string]string{"foo": "bar"},
				},
			},
		},
		{
			name:     "ReplaceLabelsFieldPath",
			original: imageBase(),
			input: images.Image{
				Labels: map[string]string{"for": "bar", "boo": "boo"},
				Target: ocispec.Descriptor{
					Size:        20,                                 // ignored
					MediaType:   "application/vnd.oci.blab+ignored", // make sure other stuff is ignored
					Annotations: map[string]string{"not": "bar", "new": "boo"},
				},
			},
			fieldpaths: []string{"labels"},
			expected: images.Image{
				Labels: map[string]string{"for": "bar", "boo": "boo"},
				Target: ocispec.Descriptor{
					Size: 10, MediaType: "application/vnd.oci.blab",
					Annotations: map[string]string{"foo": "bar", "baz": "boo"},
				},
			},
		},
		{
			name:     "ReplaceLabelsAnnotationsFieldPath",
			original: imageBase(),
			input: images.Image{
				Labels: map[string]string{"for": "bar", "boo": "boo"},
				Target: ocispec.Descriptor{
					Size:        20,                                 // ignored
					MediaType:   "application/vnd.oci.blab+ignored", // make sure other stuff is ignored
					Annotations: map[string]string{"foo": "boo"},
				},
			},
			fieldpaths: []string{"annotations", "labels"},
			expected: images.Image{
				Labels: map[string]string{"for": "bar", "boo": "boo"},
				Target: ocispec.Descriptor{
					Size: 10, MediaType: "application/vnd.oci.blab",
					Annotations: map[string]string{"foo": "boo"},
				},
			},
		},
		{
			name:     "ReplaceLabel",
			original: imageBase(),
			input: images.Image{
				Labels: map[string]string{"foo": "baz", "baz": "bunk"},
				Target: ocispec.Descriptor{
					Size:        20,                                 // ignored
					MediaType:   "application/vnd.oci.blab+ignored", // make sure other stuff is ignored
					Annotations: map[string]string{"foo": "bar"},
				},
			},
			fieldpaths: []string{"labels.foo"},
			expected: images.Image{
				Labels: map[string]string{"foo": "baz", "baz": "boo"},
				Target: ocispec.Descriptor{
					Size: 10, MediaType: "application/vnd.oci.blab",
					Annotations: map[string]string{"foo": "bar", "baz": "boo"},
				},
			},
		},
		{
			name:     "ReplaceAnnotation",
			original: imageBase(),
			input: images.Image{
				Labels: map[string]string{"foo": "baz", "baz": "bunk"},
				Target: ocispec.Descriptor{
					Size:        20,                                 // ignored
					MediaType:   "application/vnd.oci.blab+ignored", // make sure other stuff is ignored
					Annotations: map[string]string{"foo": "baz", "baz": "bunk"},
				},
			},
			fieldpaths: []string{"annotations.foo"},
			expected: images.Image{
				Labels: map[string]string{"foo": "bar", "baz": "boo"},
				Target: ocispec.Descriptor{
					Size: 10, MediaType: "application/vnd.oci.blab",
					Annotations: map[string]string{"foo": "baz", "baz": "boo"},
				},
			},
		},
		{
			name:     "ReplaceTarget", // the target is updated as a unit
			original: imageBase(),
			input: images.Image{
				Target: ocispec.Descriptor{
					Size: 10, MediaType: "application/vnd.oci.blab+replaced",
					Annotations: map[string]string{"fox": "dog"},
				},
			},
			fieldpaths: []string{"target"},
			expected: images.Image{
				Labels: map[string]string{"foo": "bar", "baz": "boo"},
				Target: ocispec.Descriptor{
					Size: 10, MediaType: "application/vnd.oci.blab+replaced",
					Annotations: map[string]string{"fox": "dog"},
				},
			},
		},
		{
			name:     "EmptySize",
			original: imageBase(),
			input: images.Image{
				Labels: map[string]string{"foo": "bar", "baz": "boo"},
				Target: ocispec.Descriptor{
					Size: 0, MediaType: "application/vnd.oci.blab",
					Annotations: map[string]string{"foo": "bar"},
				},
			},
			cause: errdefs.ErrInvalidArgument,
		},
		{
			name: "EmptySizeOnCreate",
			original: images.Image{
				Labels: map[string]string{"foo": "bar", "baz": "boo"},
				Target: ocispec.Descriptor{
					MediaType:   "application/vnd.oci.blab",
					Annotations: map[string]string{"foo": "bar"},
				},
			},
			createerr: errdefs.ErrInvalidArgument,
		},
		{
			name:     "EmptyMediaType",
			original: imageBase(),
			input: images.Image{
				Labels: map[string]string{"foo": "bar", "baz": "boo"},
				Target: ocispec.Descriptor{Size: 10},
			},
			cause: errdefs.ErrInvalidArgument,
		},
		{
			// containerd's table calls this one EmptySizeOnCreate too.
			name: "EmptyMediaTypeOnCreate",
			original: images.Image{
				Labels: map[string]string{"foo": "bar", "baz": "boo"},
				Target: ocispec.Descriptor{Size: 10},
			},
			createerr: errdefs.ErrInvalidArgument,
		},
		{
			name: "TryUpdateNameFail",
			original: images.Image{
				Labels: map[string]string{"foo": "bar", "baz": "boo"},
				Target: ocispec.Descriptor{
					Size: 10, MediaType: "application/vnd.oci.blab",
					Annotations: map[string]string{"foo": "bar"},
				},
			},
			input: images.Image{
				Name:   "test should fail",
				Labels: map[string]string{"foo": "bar", "baz": "boo"},
				Target: ocispec.Descriptor{
					Size: 10, MediaType: "application/vnd.oci.blab",
					Annotations: map[string]string{"foo": "bar"},
				},
			},
			cause: errdefs.ErrNotFound,
		},
		// Not in containerd's table: a label the request leaves out is deleted, and paths
		// outside the mask language are refused.
		{
			name:     "RemoveLabel",
			original: imageBase(),
			input: images.Image{
				Labels: map[string]string{"foo": "bar"},
			},
			fieldpaths: []string{"labels.baz"},
			expected: images.Image{
				Labels: map[string]string{"foo": "bar"},
				Target: imageBase().Target,
			},
		},
		{
			name:     "UpdateNameFieldPath",
			original: imageBase(),
			input: images.Image{
				Labels: map[string]string{"foo": "bar", "baz": "boo"},
				Target: imageBase().Target,
			},
			fieldpaths: []string{"name"},
			cause:      errdefs.ErrInvalidArgument,
		},
		{
			name:     "UpdateTargetDigestFieldPath",
			original: imageBase(),
			input: images.Image{
				Target: imageBase().Target,
			},
			fieldpaths: []string{"target.digest"},
			cause:      errdefs.ErrInvalidArgument,
		},
		{
			name:      "CreateBadDigest",
			original:  imageWithDigest(imageBase(), "sha256:not-hex"),
			createerr: errdefs.ErrInvalidArgument,
		},
	} {
		t.Run(testcase.name, func(t *testing.T) {
			testcase.original.Name = testcase.name
			if testcase.input.Name == "" {
				testcase.input.Name = testcase.name
			}
			testcase.expected.Name = testcase.name

			if testcase.original.Target.Digest == "" {
				testcase.original.Target.Digest = digest.FromString(testcase.name)
				testcase.input.Target.Digest = testcase.original.Target.Digest
				testcase.expected.Target.Digest = testcase.original.Target.Digest
			}

			// Create
			now := time.Now()
			created, err := s.images.Create(s.ctx, testcase.original)
			checkError(t, "create", err, testcase.createerr)
			if testcase.createerr != nil {
				return
			}

			checkImageTimestamps(t, &created, now, true)
			testcase.original.CreatedAt = created.CreatedAt
			testcase.expected.CreatedAt = created.CreatedAt
			testcase.original.UpdatedAt = created.UpdatedAt
			testcase.expected.UpdatedAt = created.UpdatedAt
			checkImagesEqual(t, &created, &testcase.original, "unexpected image on creation")

			// Update
			now = time.Now()
			updated, err := s.images.Update(s.ctx, testcase.input, testcase.fieldpaths...)
			checkError(t, "update", err, testcase.cause)
			if testcase.cause != nil {
				return
			}

			checkImageTimestamps(t, &updated, now, false)
			testcase.expected.UpdatedAt = updated.UpdatedAt
			checkImagesEqual(t, &updated, &testcase.expected, "update failed to give the expected result")

			// Get
			result, err := s.images.Get(s.ctx, testcase.original.Name)
			if err != nil {
				t.Fatal(err)
			}
			checkImagesEqual(t, &result, &testcase.expected, "get after update failed to give the expected result")
		})
	}
}

// Not in containerd's tests: the error classes of the calls the table above does not make.
func TestImagesErrors(t *testing.T) {
	s := newSession(t)

	existing := imageBase()
	existing.Name = "existing"
	existing.Target.Digest = digest.FromString(existing.Name)
	if _, err := s.images.Create(s.ctx, existing); err != nil {
		t.Fatal(err)
	}
	unnamed := imageBase()
	unnamed.Target.Digest = digest.FromString("unnamed")

	for _, tc := range []struct {
		name string
		call func() error
		err  error
	}{
		{"CreateExisting", func() error { _, err := s.images.Create(s.ctx, existing); return err }, errdefs.ErrAlreadyExists},
		{"CreateWithoutName", func() error { _, err := s.images.Create(s.ctx, unnamed); return err }, errdefs.ErrInvalidArgument},
		{"GetMissing", func() error { _, err := s.images.Get(s.ctx, "missing"); return err }, errdefs.ErrNotFound},
		{"UpdateMissing", func() error {
			missing := existing
			missing.Name = "missing"
			_, err := s.images.Update(s.ctx, missing, "labels")
			return err
		}, errdefs.ErrNotFound},
		{"UpdateWithoutName", func() error { _, err := s.images.Update(s.ctx, unnamed); return err }, errdefs.ErrInvalidArgument},
		// Whether the image exists is checked before the mask.
		{"UpdateMissingWithBadFieldPath", func() error {
			missing := existing
			missing.Name = "missing"
			_, err := s.images.Update(s.ctx, missing, "name")
			return err
		}, errdefs.ErrNotFound},
		{"DeleteMissing", func() error { return s.images.Delete(s.ctx, "missing") }, errdefs.ErrNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			checkError(t, tc.name, tc.call(), tc.err)
		})
	}
}

func imageBase() images.Image {
	return images.Image{
		Labels: map[string]string{"foo": "bar", "baz": "boo"},
		Target: ocispec.Descriptor{
			Size:        10,
			MediaType:   "application/vnd.oci.blab",
			Annotations: map[string]string{"foo": "bar", "baz": "boo"},
		},
	}
}

func imageWithDigest(img images.Image, d digest.Digest) images.Image {
	img.Target.Digest = d
	return img
}

func checkImageTimestamps(t *testing.T, im *images.Image, now time.Time, oncreate bool) {
	t.Helper()
	if im.UpdatedAt.IsZero() || im.CreatedAt.IsZero() {
		t.Fatalf("timestamps not set")
	}
	if oncreate {
		if !im.CreatedAt.Equal(im.UpdatedAt) {
			t.Fatalf("timestamps should be equal on create: %v != %v", im.CreatedAt, im.UpdatedAt)
		}
	} else if !im.UpdatedAt.After(im.CreatedAt) {
		t.Fatalf("timestamp for updatedat not after createdat: %v <= %v", im.UpdatedAt, im.CreatedAt)
	}
	if im.UpdatedAt.Before(now) {
		t.Fatalf("updatedat %v is before the start of the operation %v", im.UpdatedAt, now)
	}
}

// checkImagesEqual compares images as the wire carries them: an empty map and no map are
// the same, and times are instants.
func checkImagesEqual(t *testing.T, a, b *images.Image, format string, args ...interface{}) {
	t.Helper()
	equal := a.Name == b.Name &&
		sameMap(a.Labels, b.Labels) &&
		a.Target.MediaType == b.Target.MediaType &&
		a.Target.Digest == b.Target.Digest &&
		a.Target.Size == b.Target.Size &&
		sameMap(a.Target.Annotations, b.Target.Annotations) &&
		a.CreatedAt.Equal(b.CreatedAt) &&
		a.UpdatedAt.Equal(b.UpdatedAt)
	if !equal {
		t.Fatalf("images not equal \n\t%v != \n\t%v: "+format, append([]interface{}{*a, *b}, args...)...)
	}
}

func sameMap(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// --- namespaces (metadata/namespaces_test.go and the Namespaces service) ---

func TestNamespaces(t *testing.T) {
	for _, tc := range []struct {
		name string
		run  func(t *testing.T, s *session, ns string)
	}{
		{"GetUnknown", func(t *testing.T, s *session, ns string) {
			labels, err := s.namespaces.Labels(s.ctx, ns)
			if err != nil {
				t.Fatal(err)
			}
			if len(labels) != 0 {
				t.Fatalf("an unknown namespace has labels %v", labels)
			}
		}},
		{"ConnectWithDefaultNamespace", func(t *testing.T, s *session, ns string) {
			// containerd.New reads the unknown namespace's labels when it connects.
			client, err := containerd.New(serverAddress(t),
				containerd.WithDefaultNamespace(ns), containerd.WithTimeout(dialTimeout))
			if err != nil {
				t.Fatal(err)
			}
			defer client.Close()
			if _, err := client.LeasesService().Create(context.Background(), leases.WithID("default")); err != nil {
				t.Fatal(err)
			}
			listed, err := s.leases.List(s.in(ns))
			if err != nil {
				t.Fatal(err)
			}
			if got := leaseIDs(listed); !sameStrings(got, []string{"default"}) {
				t.Fatalf("the client's default namespace holds leases %v", got)
			}
		}},
		{"CreateListLabels", func(t *testing.T, s *session, ns string) {
			if err := s.namespaces.Create(s.ctx, ns, map[string]string{"a": "b"}); err != nil {
				t.Fatal(err)
			}
			s.checkNamespaceListed(t, ns, true)
			s.checkNamespaceLabels(t, ns, map[string]string{"a": "b"})
		}},
		{"CreateExisting", func(t *testing.T, s *session, ns string) {
			if err := s.namespaces.Create(s.ctx, ns, nil); err != nil {
				t.Fatal(err)
			}
			checkError(t, "create again", s.namespaces.Create(s.ctx, ns, nil), errdefs.ErrAlreadyExists)
		}},
		{"CreateInvalidName", func(t *testing.T, s *session, ns string) {
			checkError(t, "create", s.namespaces.Create(s.ctx, "Bad Name", nil), errdefs.ErrInvalidArgument)
		}},
		{"SetLabel", func(t *testing.T, s *session, ns string) {
			if err := s.namespaces.Create(s.ctx, ns, map[string]string{"a": "b"}); err != nil {
				t.Fatal(err)
			}
			if err := s.namespaces.SetLabel(s.ctx, ns, "c", "d"); err != nil {
				t.Fatal(err)
			}
			s.checkNamespaceLabels(t, ns, map[string]string{"a": "b", "c": "d"})
			if err := s.namespaces.SetLabel(s.ctx, ns, "a", ""); err != nil {
				t.Fatal(err)
			}
			s.checkNamespaceLabels(t, ns, map[string]string{"c": "d"})
		}},
		{"SetLabelCreatesNamespace", func(t *testing.T, s *session, ns string) {
			if err := s.namespaces.SetLabel(s.ctx, ns, "a", "b"); err != nil {
				t.Fatal(err)
			}
			s.checkNamespaceListed(t, ns, true)
			s.checkNamespaceLabels(t, ns, map[string]string{"a": "b"})
		}},
		{"WriteCreatesNamespace", func(t *testing.T, s *session, ns string) {
			if _, err := s.leases.Create(s.in(ns), leases.WithID("l1")); err != nil {
				t.Fatal(err)
			}
			s.checkNamespaceListed(t, ns, true)
		}},
		{"DeleteEmpty", func(t *testing.T, s *session, ns string) {
			if err := s.namespaces.Create(s.ctx, ns, nil); err != nil {
				t.Fatal(err)
			}
			if err := s.namespaces.Delete(s.ctx, ns); err != nil {
				t.Fatal(err)
			}
			s.checkNamespaceListed(t, ns, false)
		}},
		{"DeleteUnknown", func(t *testing.T, s *session, ns string) {
			checkError(t, "delete", s.namespaces.Delete(s.ctx, ns), errdefs.ErrNotFound)
		}},
		{"DeleteWithImage", func(t *testing.T, s *session, ns string) {
			img := imageBase()
			img.Name = "image"
			img.Target.Digest = digest.FromString(img.Name)
			if _, err := s.images.Create(s.in(ns), img); err != nil {
				t.Fatal(err)
			}
			err := s.namespaces.Delete(s.ctx, ns)
			checkError(t, "delete", err, errdefs.ErrFailedPrecondition)
			if !strings.Contains(err.Error(), "images") {
				t.Fatalf("the error does not say images remain: %v", err)
			}
			s.checkNamespaceListed(t, ns, true)
		}},
		{"DeleteWithContent", func(t *testing.T, s *session, ns string) {
			_, lctx := s.createLease(t, s.in(ns), "keep")
			s.writeBlob(t, lctx, "blob", nil)
			err := s.namespaces.Delete(s.ctx, ns)
			checkError(t, "delete", err, errdefs.ErrFailedPrecondition)
			if !strings.Contains(err.Error(), "blobs") {
				t.Fatalf("the error does not say blobs remain: %v", err)
			}
			s.checkNamespaceListed(t, ns, true)
		}},
		{"DeleteWithLeaseAndIngest", func(t *testing.T, s *session, ns string) {
			ctx := s.in(ns)
			_, lctx := s.createLease(t, ctx, "lease")
			w, err := s.content.Writer(lctx, content.WithRef("ingest"))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := w.Write([]byte("partial")); err != nil {
				t.Fatal(err)
			}
			w.Close()
			if err := s.namespaces.Delete(s.ctx, ns); err != nil {
				t.Fatal(err)
			}
			s.checkNamespaceListed(t, ns, false)
			if ls, err := s.leases.List(ctx); err != nil || len(ls) != 0 {
				t.Fatalf("leases after the namespace went: %v, %v", ls, err)
			}
			if st, err := s.content.ListStatuses(ctx); err != nil || len(st) != 0 {
				t.Fatalf("ingests after the namespace went: %v, %v", st, err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSession(t)
			tc.run(t, s, s.newNamespace(t))
		})
	}
}

func (s *session) checkNamespaceListed(t *testing.T, ns string, listed bool) {
	t.Helper()
	all, err := s.namespaces.List(s.ctx)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, name := range all {
		found = found || name == ns
	}
	if found != listed {
		t.Fatalf("namespace %s listed: %v, want %v (listed %v)", ns, found, listed, all)
	}
}

func (s *session) checkNamespaceLabels(t *testing.T, ns string, want map[string]string) {
	t.Helper()
	labels, err := s.namespaces.Labels(s.ctx, ns)
	if err != nil {
		t.Fatal(err)
	}
	if !sameMap(labels, want) {
		t.Fatalf("namespace %s has labels %v, want %v", ns, labels, want)
	}
}

// --- garbage collection (metadata/db_test.go TestMetadataCollector, gc_test.go), end to end ---

// gcBlob is a blob a collection keeps or removes. refs are labels whose values name other
// blobs of the same test; they are written as those blobs' digests.
type gcBlob struct {
	name   string
	labels map[string]string
	refs   map[string]string
	kept   bool
}

// gcLease holds blobs by name; snapshots are resources of type snapshots/<snapshotter>,
// which a store without snapshots keeps as entries. A lease that expires does so within
// seconds of its creation, before the collection.
type gcLease struct {
	id        string
	labels    map[string]string
	content   []string
	snapshots map[string]string
	expires   bool
	kept      bool
}

// gcImage targets a blob by name; refs are label references, as gcBlob's.
type gcImage struct {
	name   string
	target string
	refs   map[string]string
}

// Within this time of its creation an expiring lease still protects what is written
// under it; the test then waits for it to pass. gc.expire has whole seconds.
const expiringLeaseLife = 2 * time.Second

func TestMetadataCollector(t *testing.T) {
	s := newSession(t)

	blobs := []gcBlob{
		{name: "unreferenced", kept: false},
		{name: "image-target", kept: true},
		{name: "image-label-ref", kept: true},
		{name: "gc-root", labels: map[string]string{gcRootLabel: time.Now().String()},
			refs: map[string]string{gcRefContentLabel + ".0": "gc-root-child"}, kept: true},
		{name: "gc-root-child", kept: true},
		// Lease preservation: what the lease lists, and what that references, transitively.
		{name: "leased", refs: map[string]string{
			gcRefContentLabel + ".0":         "leased-child",
			gcRefContentLabel + "/layer":     "slash-ref",
			"containerd.io/gc.ref.contentxx": "prefix-only-ref",
		}, kept: true},
		{name: "leased-child", refs: map[string]string{gcRefContentLabel: "leased-grandchild"}, kept: true},
		{name: "leased-grandchild", kept: true},
		{name: "slash-ref", kept: true},
		{name: "prefix-only-ref", kept: false},
		// A flat lease keeps what it lists, not what that references.
		{name: "flat-leased", refs: map[string]string{gcRefContentLabel + ".0": "flat-child"}, kept: true},
		{name: "flat-child", kept: false},
		// Expiry: an expired lease protects nothing and goes itself.
		{name: "expired-leased", kept: false},
		{name: "unexpired-leased", kept: true},
	}
	leaseTable := []gcLease{
		{id: "lease-1", content: []string{"leased"},
			snapshots: map[string]string{"snapshots/native": "6"}, kept: true},
		{id: "lease-2", labels: map[string]string{gcFlatLabel: time.Now().String()},
			content: []string{"flat-leased"}, snapshots: map[string]string{"snapshots/native": "9"}, kept: true},
		{id: "expired", content: []string{"expired-leased"}, expires: true, kept: false},
		{id: "unexpired", labels: map[string]string{gcExpireLabel: time.Now().Add(time.Hour).Format(time.RFC3339)},
			content: []string{"unexpired-leased"}, kept: true},
	}
	imageTable := []gcImage{
		{name: "image-1", target: "image-target",
			refs: map[string]string{gcRefContentLabel + ".config": "image-label-ref"}},
	}

	// Everything is written under a lease of its own until the collection is due, so no
	// collection the server runs on its own removes anything early.
	_, setup := s.createLease(t, s.ctx, "setup")
	digests := map[string]digest.Digest{}
	for _, b := range blobs {
		_, desc := testBlob(s.ctx, b.name)
		digests[b.name] = desc.Digest
	}
	resolve := func(labels, refs map[string]string) map[string]string {
		out := map[string]string{}
		for k, v := range labels {
			out[k] = v
		}
		for k, name := range refs {
			out[k] = digests[name].String()
		}
		return out
	}
	for _, b := range blobs {
		s.writeBlob(t, setup, b.name, resolve(b.labels, b.refs))
	}
	for _, img := range imageTable {
		_, desc := testBlob(s.ctx, img.target)
		if _, err := s.images.Create(s.ctx, images.Image{
			Name: img.name, Labels: resolve(nil, img.refs), Target: desc,
		}); err != nil {
			t.Fatal(err)
		}
	}
	var expiry time.Time
	for _, l := range leaseTable {
		opts := []leases.Opt{leases.WithLabels(l.labels)}
		if l.expires {
			opts = append(opts, leases.WithExpiration(expiringLeaseLife))
		}
		lease, _ := s.createLease(t, s.ctx, l.id, opts...)
		if l.expires {
			at, err := time.Parse(time.RFC3339, lease.Labels[gcExpireLabel])
			if err != nil {
				t.Fatal(err)
			}
			if at.After(expiry) {
				expiry = at
			}
		}
		for _, name := range l.content {
			if err := s.leases.AddResource(s.ctx, lease, leases.Resource{ID: digests[name].String(), Type: "content"}); err != nil {
				t.Fatal(err)
			}
		}
		for typ, id := range l.snapshots {
			if err := s.leases.AddResource(s.ctx, lease, leases.Resource{ID: id, Type: typ}); err != nil {
				t.Fatal(err)
			}
		}
	}
	time.Sleep(time.Until(expiry.Add(100 * time.Millisecond)))

	// Deleting the setup lease synchronously runs a whole collection.
	if err := s.leases.Delete(s.ctx, leases.Lease{ID: "setup"}, leases.SynchronousDelete); err != nil {
		t.Fatal(err)
	}

	for _, b := range blobs {
		t.Run("content/"+b.name, func(t *testing.T) {
			s.checkKept(t, s.ctx, b.name, b.kept)
		})
	}
	listed, err := s.leases.List(s.ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range leaseTable {
		t.Run("lease/"+l.id, func(t *testing.T) {
			found := false
			for _, got := range listed {
				found = found || got.ID == l.id
			}
			if found != l.kept {
				t.Fatalf("lease %s kept: %v, want %v", l.id, found, l.kept)
			}
		})
	}
}

// checkKept checks that blob `name` is still readable, whole, in ctx's namespace, or that
// it is gone.
func (s *session) checkKept(t *testing.T, ctx context.Context, name string, kept bool) {
	t.Helper()
	data, desc := testBlob(ctx, name)
	_, err := s.content.Info(ctx, desc.Digest)
	if !kept {
		if !errdefs.IsNotFound(err) {
			t.Fatalf("blob %s should have been collected: info answered %v", name, err)
		}
		return
	}
	if err != nil {
		t.Fatalf("blob %s should have been kept: %v", name, err)
	}
	got, err := content.ReadBlob(ctx, s.content, desc)
	if err != nil {
		t.Fatalf("read blob %s: %v", name, err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("blob %s reads back as %q", name, got)
	}
}

// Synchronous deletes return only after a collection that started after them.
func TestSynchronousDelete(t *testing.T) {
	for _, tc := range []struct {
		name   string
		blobs  []string
		leases map[string][]string // id -> blobs held
		images map[string]string   // name -> target blob
		delete func(s *session) error
		kept   []string
		gone   []string
	}{
		{
			name:   "Lease",
			blobs:  []string{"leased", "held-elsewhere"},
			leases: map[string][]string{"deleted": {"leased"}, "kept": {"held-elsewhere"}},
			delete: func(s *session) error {
				return s.leases.Delete(s.ctx, leases.Lease{ID: "deleted"}, leases.SynchronousDelete)
			},
			kept: []string{"held-elsewhere"},
			gone: []string{"leased"},
		},
		{
			name:   "Image",
			blobs:  []string{"target", "other-target"},
			images: map[string]string{"deleted": "target", "kept": "other-target"},
			delete: func(s *session) error {
				return s.images.Delete(s.ctx, "deleted", images.SynchronousDelete())
			},
			kept: []string{"other-target"},
			gone: []string{"target"},
		},
		{
			name:   "ImageSharingItsTarget",
			blobs:  []string{"target"},
			images: map[string]string{"deleted": "target", "kept": "target"},
			delete: func(s *session) error {
				return s.images.Delete(s.ctx, "deleted", images.SynchronousDelete())
			},
			kept: []string{"target"},
		},
		{
			name:   "ImageWhoseTargetIsLeased",
			blobs:  []string{"target"},
			images: map[string]string{"deleted": "target"},
			leases: map[string][]string{"kept": {"target"}},
			delete: func(s *session) error {
				return s.images.Delete(s.ctx, "deleted", images.SynchronousDelete())
			},
			kept: []string{"target"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSession(t)
			_, setup := s.createLease(t, s.ctx, "setup")
			for _, name := range tc.blobs {
				s.writeBlob(t, setup, name, nil)
			}
			for id, held := range tc.leases {
				lease, _ := s.createLease(t, s.ctx, id)
				for _, name := range held {
					_, desc := testBlob(s.ctx, name)
					if err := s.leases.AddResource(s.ctx, lease, leases.Resource{ID: desc.Digest.String(), Type: "content"}); err != nil {
						t.Fatal(err)
					}
				}
			}
			for name, target := range tc.images {
				_, desc := testBlob(s.ctx, target)
				if _, err := s.images.Create(s.ctx, images.Image{Name: name, Target: desc}); err != nil {
					t.Fatal(err)
				}
			}
			if err := s.leases.Delete(s.ctx, leases.Lease{ID: "setup"}, leases.SynchronousDelete); err != nil {
				t.Fatal(err)
			}
			for _, name := range tc.blobs {
				s.checkKept(t, s.ctx, name, true)
			}

			if err := tc.delete(s); err != nil {
				t.Fatal(err)
			}
			for _, name := range tc.kept {
				s.checkKept(t, s.ctx, name, true)
			}
			for _, name := range tc.gone {
				s.checkKept(t, s.ctx, name, false)
			}
		})
	}
}

// A collection that removes a blob's record in one namespace leaves its bytes to a
// namespace that still records it (the original checks records only).
func TestCollectionKeepsBytesRecordedInAnotherNamespace(t *testing.T) {
	s := newSession(t)
	other := s.in(s.newNamespace(t))

	data := []byte(fmt.Sprintf("shared by %s and another namespace\n", s.namespace))
	desc := ocispec.Descriptor{Digest: digest.FromBytes(data), Size: int64(len(data))}
	_, kept := s.createLease(t, other, "kept")
	if err := content.WriteBlob(kept, s.content, "shared", bytes.NewReader(data), desc); err != nil {
		t.Fatal(err)
	}
	_, dropped := s.createLease(t, s.ctx, "dropped")
	if err := content.WriteBlob(dropped, s.content, "shared", bytes.NewReader(data), desc); err != nil {
		t.Fatal(err)
	}

	if err := s.leases.Delete(s.ctx, leases.Lease{ID: "dropped"}, leases.SynchronousDelete); err != nil {
		t.Fatal(err)
	}
	if _, err := s.content.Info(s.ctx, desc.Digest); !errdefs.IsNotFound(err) {
		t.Fatalf("the blob should have left the namespace whose lease went: %v", err)
	}
	got, err := content.ReadBlob(other, s.content, desc)
	if err != nil {
		t.Fatalf("read the blob in the namespace that keeps it: %v", err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("the blob reads back as %q", got)
	}
}
