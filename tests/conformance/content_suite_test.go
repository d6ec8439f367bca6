// Package conformance runs containerd's own tests against any server that speaks
// containerd's gRPC APIs: containerd itself, or contentd. Every *_suite_test.go file here
// belongs to the package and its one test binary; run one suite at a time with -test.run.
//
// The content suite (this file) is containerd's content store testsuite, run through
// containerd's content proxy. The metadata suite (metadata_suite_test.go) ports containerd's
// tests of leases, images, namespaces and garbage collection, run through containerd's
// client. Both talk to the server only as containerd's clients do. Configure them through
// the environment:
//
//	CONTENTD_ADDRESS        server socket, "unix:///path" or a bare path (required)
//	CONTENTD_SUITE_LEASES=1 content suite: hold a lease per test namespace (needs the Leases API)
//
// A real containerd garbage-collects content that nothing references, so the content suite
// needs the leases against it; a server with only the Content API must run it without.
//
// The content suite's blobs are pseudo-random from fixed seeds, so their digests repeat from
// run to run: point it at a fresh store each time, or the shared content policy will find
// blobs from an earlier run and resumed writes will not start where the suite expects.
package conformance

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	leasesapi "github.com/containerd/containerd/api/services/leases/v1"
	"github.com/containerd/containerd/content"
	contentproxy "github.com/containerd/containerd/content/proxy"
	"github.com/containerd/containerd/content/testsuite"
	"github.com/containerd/containerd/leases"
	leasesproxy "github.com/containerd/containerd/leases/proxy"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/pkg/dialer"
	"google.golang.org/grpc"
)

const (
	addressEnv = "CONTENTD_ADDRESS"
	leasesEnv  = "CONTENTD_SUITE_LEASES"

	// containerd's own client and server limits.
	maxMessageSize = 16 << 20
	dialTimeout    = 10 * time.Second
	// Outlives any single test; the lease is deleted when the test ends anyway.
	leaseExpiration = time.Hour
)

func TestContentSuite(t *testing.T) {
	testsuite.ContentSuite(t, "contentd", storeInit(t))
}

func TestContentCrossNSSharedSuite(t *testing.T) {
	testsuite.ContentCrossNSSharedSuite(t, "contentd", storeInit(t))
}

// storeInit dials the server once per top-level test and hands every subtest the same
// remote store; isolation between subtests comes from the namespaces, not the store.
func storeInit(t *testing.T) testsuite.StoreInitFn {
	conn := dial(t)
	store := contentproxy.NewContentStore(contentapi.NewContentClient(conn))

	var leaseManager leases.Manager
	if os.Getenv(leasesEnv) == "1" {
		leaseManager = leasesproxy.NewLeaseManager(leasesapi.NewLeasesClient(conn))
	}
	wrap := namespaceWrapper(leaseManager)

	return func(ctx context.Context, _ string) (context.Context, content.Store, func() error, error) {
		return testsuite.SetContextWrapper(ctx, wrap), store, func() error { return nil }, nil
	}
}

// serverAddress is the server's socket path, as containerd's dialer takes it.
func serverAddress(t *testing.T) string {
	t.Helper()
	address := os.Getenv(addressEnv)
	if address == "" {
		t.Fatalf("%s is not set: point it at the server's socket", addressEnv)
	}
	return strings.TrimPrefix(address, "unix://")
}

func dial(t *testing.T) *grpc.ClientConn {
	t.Helper()
	address := serverAddress(t)

	ctx, cancel := context.WithTimeout(context.Background(), dialTimeout)
	defer cancel()
	conn, err := grpc.DialContext(ctx, dialer.DialAddress(address),
		grpc.WithInsecure(),
		grpc.WithBlock(),
		grpc.WithContextDialer(dialer.ContextDialer),
		grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(maxMessageSize),
			grpc.MaxCallSendMsgSize(maxMessageSize),
		),
	)
	if err != nil {
		t.Fatalf("dial %s: %v", address, err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

var namespaceCount int64

// namespaceWrapper gives every call a namespace of its own: the suite calls it once per
// test, and the cross-namespace tests call it again for their second namespace. The
// process id and start time keep names unique across runs against the same server.
func namespaceWrapper(leaseManager leases.Manager) testsuite.ContextWrapper {
	run := fmt.Sprintf("suite-%d-%d", os.Getpid(), time.Now().UnixNano())
	return func(ctx context.Context) (context.Context, func(context.Context) error, error) {
		namespace := fmt.Sprintf("%s-%d", run, atomic.AddInt64(&namespaceCount, 1))
		ctx = namespaces.WithNamespace(ctx, namespace)
		if leaseManager == nil {
			return ctx, func(context.Context) error { return nil }, nil
		}

		lease, err := leaseManager.Create(ctx, leases.WithRandomID(), leases.WithExpiration(leaseExpiration))
		if err != nil {
			return nil, nil, fmt.Errorf("create lease in namespace %s: %w", namespace, err)
		}
		leased := leases.WithLease(ctx, lease.ID)
		release := func(context.Context) error {
			if err := leaseManager.Delete(leased, lease); err != nil {
				return fmt.Errorf("delete lease %s in namespace %s: %w", lease.ID, namespace, err)
			}
			return nil
		}
		return leased, release, nil
	}
}
