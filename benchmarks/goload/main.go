// Command goload drives a server that speaks containerd's Content API with containerd's own
// Go client pieces: the content proxy over a gRPC connection dialled as containerd's client
// dials, and content.WriteBlob. A Python client spends CPU of its own on the same cores as
// the server; this one spends little, so the server's cost shows.
//
// It dials one connection per client, prints "ready" on stdout, waits for a line on stdin
// (the harness opens its measured window in between), runs the clients together and prints
// one JSON object with what they did. Two modes:
//
//	small    each client writes random blobs (-size bytes, labelled -labels) with WriteBlob,
//	         then Infos each, for -seconds
//	contend  each client writes the same -file (-digest) under the same -ref with WriteBlob,
//	         waiting out the others on the ref's lock; once all returned, the namespace must
//	         list exactly one blob of that digest
//
// Times are seconds on CLOCK_MONOTONIC, the clock Python's time.monotonic() reads, so they
// compare with the harness's own.
package main

import (
	"bufio"
	"bytes"
	"context"
	crand "crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math/rand"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	"github.com/containerd/containerd/content"
	contentproxy "github.com/containerd/containerd/content/proxy"
	"github.com/containerd/containerd/defaults"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/pkg/dialer"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

const (
	dialTimeout = 10 * time.Second
	// How many client errors the result carries in full; the count covers them all.
	errorsShown = 5
)

type options struct {
	address   string
	namespace string
	mode      string
	clients   int
	seconds   float64
	size      int
	labels    map[string]string
	file      string
	digest    digest.Digest
	ref       string
	timeout   time.Duration
}

// result is what the run prints: each client's count and end, the release time, the
// errors, and the process's own CPU over the run.
type result struct {
	Mode       string    `json:"mode"`
	Clients    int       `json:"clients"`
	Start      float64   `json:"start"`
	Ends       []float64 `json:"ends"`
	Counts     []int     `json:"counts"`
	Blobs      int       `json:"blobs"`
	ErrorCount int       `json:"error_count"`
	Errors     []string  `json:"errors"`
	CPUSeconds float64   `json:"cpu_seconds"`
	// contend only: blobs of the digest the namespace lists once every client returned.
	Listed int `json:"listed"`
}

func main() {
	opts, err := parseFlags()
	if err != nil {
		fatal(err)
	}
	conns := make([]*grpc.ClientConn, opts.clients)
	for i := range conns {
		if conns[i], err = dial(opts.address); err != nil {
			fatal(err)
		}
		defer conns[i].Close()
	}
	ctx := namespaces.WithNamespace(context.Background(), opts.namespace)
	stores := make([]content.Store, len(conns))
	for i, conn := range conns {
		stores[i] = contentproxy.NewContentStore(contentapi.NewContentClient(conn))
	}

	fmt.Println("ready")
	if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
		fatal(fmt.Errorf("waiting for the go on stdin: %w", err))
	}

	var out result
	switch opts.mode {
	case "small":
		out = runSmall(ctx, stores, opts)
	case "contend":
		out = runContend(ctx, stores, opts)
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fatal(err)
	}
}

func parseFlags() (options, error) {
	var opts options
	var labels, dgst string
	var timeout float64
	flag.StringVar(&opts.address, "address", "", "server socket: unix:///path or a bare path")
	flag.StringVar(&opts.namespace, "namespace", "default", "containerd namespace")
	flag.StringVar(&opts.mode, "mode", "small", "small or contend")
	flag.IntVar(&opts.clients, "clients", 1, "clients, each on a connection of its own")
	flag.Float64Var(&opts.seconds, "seconds", 15, "small: how long each client writes")
	flag.IntVar(&opts.size, "size", 4096, "small: bytes per blob")
	flag.StringVar(&labels, "labels", "{}", "labels of every blob, a JSON object")
	flag.StringVar(&opts.file, "file", "", "contend: the content every client writes")
	flag.StringVar(&dgst, "digest", "", "contend: the file's digest")
	flag.StringVar(&opts.ref, "ref", "", "contend: the ref every client writes under")
	flag.Float64Var(&timeout, "timeout", 600, "seconds any one WriteBlob may take")
	flag.Parse()

	if opts.address == "" {
		return opts, errors.New("-address is required")
	}
	if opts.clients < 1 {
		return opts, errors.New("-clients must be at least 1")
	}
	if err := json.Unmarshal([]byte(labels), &opts.labels); err != nil {
		return opts, fmt.Errorf("-labels: %w", err)
	}
	opts.timeout = time.Duration(timeout * float64(time.Second))
	switch opts.mode {
	case "small":
	case "contend":
		parsed, err := digest.Parse(dgst)
		if err != nil {
			return opts, fmt.Errorf("-digest: %w", err)
		}
		opts.digest = parsed
		if opts.file == "" || opts.ref == "" {
			return opts, errors.New("contend needs -file and -ref")
		}
	default:
		return opts, fmt.Errorf("-mode %q: not small or contend", opts.mode)
	}
	return opts, nil
}

// dial connects as containerd's client.New does: blocking, with its backoff, dialer and
// message size limits.
func dial(address string) (*grpc.ClientConn, error) {
	address = strings.TrimPrefix(address, "unix://")
	backoffConfig := backoff.DefaultConfig
	backoffConfig.MaxDelay = 3 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), dialTimeout)
	defer cancel()
	conn, err := grpc.DialContext(ctx, dialer.DialAddress(address),
		grpc.WithBlock(),
		grpc.WithInsecure(),
		grpc.FailOnNonTempDialError(true),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoffConfig}),
		grpc.WithContextDialer(dialer.ContextDialer),
		grpc.WithReturnConnectionError(),
		grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(defaults.DefaultMaxRecvMsgSize),
			grpc.MaxCallSendMsgSize(defaults.DefaultMaxSendMsgSize),
		),
	)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", address, err)
	}
	return conn, nil
}

// runSmall runs every client's loop until -seconds after the release.
func runSmall(ctx context.Context, stores []content.Store, opts options) result {
	run := newRun("small", len(stores))
	deadline := run.out.Start + opts.seconds
	prefix := fmt.Sprintf("small-go-%d-%x", os.Getpid(), seed())
	var wg sync.WaitGroup
	for i, store := range stores {
		wg.Add(1)
		go func(i int, store content.Store) {
			defer wg.Done()
			random := rand.New(rand.NewSource(seed()))
			data := make([]byte, opts.size)
			count := 0
			for monotonic() < deadline {
				random.Read(data)
				if err := writeAndInfo(ctx, store, fmt.Sprintf("%s-%d-%d", prefix, i, count), data, opts); err != nil {
					run.fail(err)
					break
				}
				count++
			}
			run.end(i, count)
		}(i, store)
	}
	wg.Wait()
	return run.finish()
}

func writeAndInfo(ctx context.Context, store content.Store, ref string, data []byte, opts options) error {
	ctx, cancel := context.WithTimeout(ctx, opts.timeout)
	defer cancel()
	desc := ocispec.Descriptor{Digest: digest.FromBytes(data), Size: int64(len(data))}
	if err := content.WriteBlob(ctx, store, ref, bytes.NewReader(data), desc, content.WithLabels(opts.labels)); err != nil {
		return fmt.Errorf("write %s: %w", desc.Digest, err)
	}
	info, err := store.Info(ctx, desc.Digest)
	if err != nil {
		return fmt.Errorf("info %s: %w", desc.Digest, err)
	}
	if info.Size != desc.Size {
		return fmt.Errorf("info %s: size %d, wrote %d", desc.Digest, info.Size, desc.Size)
	}
	return nil
}

// runContend releases every client on the one ref and content, then lists the namespace.
func runContend(ctx context.Context, stores []content.Store, opts options) result {
	run := newRun("contend", len(stores))
	var wg sync.WaitGroup
	for i, store := range stores {
		wg.Add(1)
		go func(i int, store content.Store) {
			defer wg.Done()
			if err := writeFile(ctx, store, opts); err != nil {
				run.fail(err)
				run.end(i, 0)
				return
			}
			run.end(i, 1)
		}(i, store)
	}
	wg.Wait()
	out := run.finish()
	listed, err := countBlobs(ctx, stores[0], opts.digest)
	if err != nil {
		out.ErrorCount++
		out.Errors = append(out.Errors, err.Error())
	}
	out.Listed = listed
	return out
}

func writeFile(ctx context.Context, store content.Store, opts options) error {
	ctx, cancel := context.WithTimeout(ctx, opts.timeout)
	defer cancel()
	file, err := os.Open(opts.file)
	if err != nil {
		return err
	}
	defer file.Close()
	stat, err := file.Stat()
	if err != nil {
		return err
	}
	desc := ocispec.Descriptor{Digest: opts.digest, Size: stat.Size()}
	if err := content.WriteBlob(ctx, store, opts.ref, file, desc, content.WithLabels(opts.labels)); err != nil {
		return fmt.Errorf("write %s under %s: %w", desc.Digest, opts.ref, err)
	}
	return nil
}

func countBlobs(ctx context.Context, store content.Store, dgst digest.Digest) (int, error) {
	count := 0
	err := store.Walk(ctx, func(info content.Info) error {
		if info.Digest == dgst {
			count++
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("walk: %w", err)
	}
	return count, nil
}

// run collects what the clients of one run report, from the release on.
type run struct {
	mu       sync.Mutex
	out      result
	cpuStart float64
}

func newRun(mode string, clients int) *run {
	return &run{
		out: result{
			Mode:    mode,
			Clients: clients,
			Start:   monotonic(),
			Ends:    make([]float64, clients),
			Counts:  make([]int, clients),
			Errors:  []string{},
		},
		cpuStart: cpuSeconds(),
	}
}

func (r *run) end(client, count int) {
	now := monotonic()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.out.Ends[client] = now
	r.out.Counts[client] = count
	r.out.Blobs += count
}

func (r *run) fail(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.out.ErrorCount++
	if len(r.out.Errors) < errorsShown {
		r.out.Errors = append(r.out.Errors, err.Error())
	}
}

func (r *run) finish() result {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.out.CPUSeconds = cpuSeconds() - r.cpuStart
	return r.out
}

func monotonic() float64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		panic(err)
	}
	return float64(ts.Sec) + float64(ts.Nsec)/1e9
}

// cpuSeconds is the user plus system CPU time of the whole process so far.
func cpuSeconds() float64 {
	var usage syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &usage); err != nil {
		panic(err)
	}
	seconds := func(tv syscall.Timeval) float64 { return float64(tv.Sec) + float64(tv.Usec)/1e6 }
	return seconds(usage.Utime) + seconds(usage.Stime)
}

// seed gives every run and client content of its own, so no blob is found already stored.
func seed() int64 {
	var b [8]byte
	if _, err := crand.Read(b[:]); err != nil {
		panic(err)
	}
	return int64(binary.LittleEndian.Uint64(b[:]) >> 1)
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "goload:", err)
	os.Exit(1)
}
