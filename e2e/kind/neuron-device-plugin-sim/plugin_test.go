package main

import (
	"bytes"
	"context"
	"log"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// fakeKubelet is the kubelet's Registration service on <dir>/kubelet.sock; it records every RegisterRequest.
type fakeKubelet struct {
	pluginapi.UnimplementedRegistrationServer
	server *grpc.Server
	reqs   chan *pluginapi.RegisterRequest
}

func startFakeKubelet(t *testing.T, dir string) *fakeKubelet {
	t.Helper()
	l, err := net.Listen("unix", filepath.Join(dir, "kubelet.sock"))
	if err != nil {
		t.Fatal(err)
	}
	k := &fakeKubelet{server: grpc.NewServer(), reqs: make(chan *pluginapi.RegisterRequest, 16)}
	pluginapi.RegisterRegistrationServer(k.server, k)
	go func() { _ = k.server.Serve(l) }()
	t.Cleanup(k.server.Stop)
	return k
}

func (k *fakeKubelet) Register(_ context.Context, r *pluginapi.RegisterRequest) (*pluginapi.Empty, error) {
	k.reqs <- r
	return &pluginapi.Empty{}, nil
}

// registrations waits for n RegisterRequests, keyed by resource name.
func (k *fakeKubelet) registrations(t *testing.T, n int) map[string]*pluginapi.RegisterRequest {
	t.Helper()
	got := map[string]*pluginapi.RegisterRequest{}
	for len(got) < n {
		select {
		case r := <-k.reqs:
			got[r.ResourceName] = r
		case <-time.After(10 * time.Second):
			t.Fatalf("got %d of %d registrations", len(got), n)
		}
	}
	return got
}

// startPlugin runs the plugin against dir until the test ends, then checks it stopped cleanly.
func startPlugin(t *testing.T, dir string, topo Topology) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { run(ctx, config{dir: dir, topo: topo, poll: 20 * time.Millisecond}); close(done) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("plugin did not stop")
		}
		for _, res := range resources {
			if _, err := os.Stat(filepath.Join(dir, res.Socket)); err == nil {
				t.Errorf("%s left behind after stop", res.Socket)
			}
		}
	})
}

func dial(t *testing.T, dir string, res resource) pluginapi.DevicePluginClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+filepath.Join(dir, res.Socket), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return pluginapi.NewDevicePluginClient(conn)
}

func TestRegistersBothResourcesAndListsHealthyDevices(t *testing.T) {
	dir := t.TempDir()
	k := startFakeKubelet(t, dir)
	topo := instanceTypes["inf2.24xlarge"]
	startPlugin(t, dir, topo)
	regs := k.registrations(t, 2)
	for _, res := range resources {
		r := regs[res.Name]
		if r == nil {
			t.Fatalf("%s not registered; got %v", res.Name, regs)
		}
		if r.Version != pluginapi.Version || r.Endpoint != res.Socket || !r.Options.GetGetPreferredAllocationAvailable() {
			t.Errorf("%s registration = %v", res.Name, r)
		}
		client := dial(t, dir, res)
		opts, err := client.GetDevicePluginOptions(context.Background(), &pluginapi.Empty{})
		if err != nil || !opts.GetPreferredAllocationAvailable || opts.PreStartRequired {
			t.Errorf("%s options = %v, %v", res.Name, opts, err)
		}
		stream, err := client.ListAndWatch(context.Background(), &pluginapi.Empty{})
		if err != nil {
			t.Fatal(err)
		}
		msg, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]int{coreResource.Name: 12, deviceResource.Name: 6}[res.Name]
		if len(msg.Devices) != want {
			t.Fatalf("%s lists %d devices, want %d", res.Name, len(msg.Devices), want)
		}
		for i, d := range msg.Devices {
			if d.ID != res.IDPrefix+strconv.Itoa(i) || d.Health != pluginapi.Healthy {
				t.Errorf("%s device %d = %v", res.Name, i, d)
			}
		}
	}
}

func TestRegistersAgain(t *testing.T) {
	for _, tc := range []struct {
		name                          string
		restartKubelet, deleteSockets bool
		wantLog                       string
	}{
		{"kubelet restart", true, true, "restarting and registering again"}, // a real kubelet does both
		{"new kubelet.sock only", true, false, "kubelet.sock was re-created"},
		{"plugin sockets deleted only", false, true, "was removed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			logs := captureLog(t)
			dir := t.TempDir()
			startPlugin(t, dir, instanceTypes["inf2.xlarge"]) // before kubelet: it waits for kubelet.sock
			kubelet := startFakeKubelet(t, dir)
			kubelet.registrations(t, 2)
			time.Sleep(100 * time.Millisecond) // let the Register replies reach the plugin
			if tc.restartKubelet {
				kubelet.server.Stop() // removes kubelet.sock
			}
			if tc.deleteSockets {
				for _, res := range resources {
					os.Remove(filepath.Join(dir, res.Socket))
				}
			}
			if tc.restartKubelet {
				kubelet = startFakeKubelet(t, dir)
			}
			for name, r := range kubelet.registrations(t, 2) {
				// Deleting the two sockets is not atomic: the plugin may re-create both after the first is gone and
				// register, then lose the second to the test's next os.Remove, notice, and serve it again. What
				// must hold is that the endpoint it registered comes back (bounded), not that it never blinked.
				deadline := time.Now().Add(5 * time.Second)
				for {
					_, err := os.Stat(filepath.Join(dir, r.Endpoint))
					if err == nil {
						break
					}
					if time.Now().After(deadline) {
						t.Errorf("%s registered endpoint %s that does not exist: %v", name, r.Endpoint, err)
						break
					}
					time.Sleep(10 * time.Millisecond)
				}
			}
			if !strings.Contains(logs.String(), tc.wantLog) {
				t.Errorf("log lacks %q:\n%s", tc.wantLog, logs.String())
			}
		})
	}
}

// captureLog sends the standard logger to a buffer for the rest of the test.
func captureLog(t *testing.T) *lockedBuffer {
	b := &lockedBuffer{}
	log.SetOutput(b)
	t.Cleanup(func() { log.SetOutput(os.Stderr) })
	return b
}

type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestContiguousRun(t *testing.T) {
	for _, tc := range []struct {
		name            string
		available, must []int
		size            int
		want            []int
	}{
		{"all free", []int{0, 1, 2, 3}, nil, 2, []int{0, 1}},
		{"unsorted input", []int{3, 1, 2, 0}, nil, 3, []int{0, 1, 2}},
		{"fragmented: skip holes", []int{0, 2, 3, 5, 6, 7}, nil, 3, []int{5, 6, 7}},
		{"fragmented: first fitting gap", []int{1, 3, 4, 6, 7}, nil, 2, []int{3, 4}},
		{"single core", []int{5, 9}, nil, 1, []int{5}},
		{"must include shifts the block", []int{0, 1, 2, 3, 4}, []int{3}, 2, []int{2, 3}},
		{"must include spanning", []int{0, 1, 2, 3, 4, 5}, []int{2, 4}, 3, []int{2, 3, 4}},
		{"no contiguous block: lowest", []int{0, 2, 4, 6}, nil, 2, []int{0, 2}},
		{"no contiguous block: keeps must", []int{0, 2, 4, 6}, []int{4}, 2, []int{0, 4}},
		{"whole node", []int{0, 1, 2, 3}, nil, 4, []int{0, 1, 2, 3}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := contiguousRun(tc.available, tc.must, tc.size); !slices.Equal(got, tc.want) {
				t.Errorf("contiguousRun(%v, %v, %d) = %v, want %v", tc.available, tc.must, tc.size, got, tc.want)
			}
		})
	}
}

func TestGetPreferredAllocationOverGRPC(t *testing.T) {
	p := newPlugin(coreResource, instanceTypes["inf2.24xlarge"])
	resp, err := p.GetPreferredAllocation(context.Background(), &pluginapi.PreferredAllocationRequest{
		ContainerRequests: []*pluginapi.ContainerPreferredAllocationRequest{
			{AvailableDeviceIDs: ids("neuroncore-", 0, 2, 3, 4, 7), AllocationSize: 3},
			{AvailableDeviceIDs: ids("neuroncore-", 8, 9, 10, 11), MustIncludeDeviceIDs: ids("neuroncore-", 10), AllocationSize: 2},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range [][]string{ids("neuroncore-", 2, 3, 4), ids("neuroncore-", 9, 10)} {
		if got := resp.ContainerResponses[i].DeviceIDs; !slices.Equal(got, want) {
			t.Errorf("container %d: preferred %v, want %v", i, got, want)
		}
	}
	_, err = p.GetPreferredAllocation(context.Background(), &pluginapi.PreferredAllocationRequest{
		ContainerRequests: []*pluginapi.ContainerPreferredAllocationRequest{{AvailableDeviceIDs: []string{"neuron-0"}, AllocationSize: 1}},
	})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("unknown available ID: err = %v", err)
	}
}

func TestAllocate(t *testing.T) {
	topo := instanceTypes["inf2.24xlarge"] // 6 devices x 2 cores
	for _, tc := range []struct {
		name    string
		res     resource
		ids     []string
		cores   string
		devices []string
	}{
		{"one core", coreResource, ids("neuroncore-", 5), "5", []string{"/dev/neuron2"}},
		{"two cores of one device, unsorted", coreResource, ids("neuroncore-", 3, 2), "2,3", []string{"/dev/neuron1"}},
		{"cores across a device boundary", coreResource, ids("neuroncore-", 1, 2), "1,2", []string{"/dev/neuron0", "/dev/neuron1"}},
		{"whole device", deviceResource, ids("neuron-", 1), "2,3", []string{"/dev/neuron1"}},
		{"two whole devices", deviceResource, ids("neuron-", 5, 4), "8,9,10,11", []string{"/dev/neuron4", "/dev/neuron5"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := newPlugin(tc.res, topo).Allocate(context.Background(), &pluginapi.AllocateRequest{
				ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: tc.ids}},
			})
			if err != nil {
				t.Fatal(err)
			}
			c := resp.ContainerResponses[0]
			if c.Envs[VisibleCoresEnv] != tc.cores || c.Envs[SimulatedEnv] != "1" || len(c.Envs) != 2 {
				t.Errorf("envs = %v, want %s=%s and %s=1", c.Envs, VisibleCoresEnv, tc.cores, SimulatedEnv)
			}
			var got []string
			for _, d := range c.Devices {
				got = append(got, d.ContainerPath)
				if d.HostPath != SimulatedHostDevice || d.Permissions != "rw" {
					t.Errorf("device spec %v", d)
				}
			}
			if !slices.Equal(got, tc.devices) {
				t.Errorf("devices %v, want %v", got, tc.devices)
			}
		})
	}
}

func TestAllocateSeveralContainers(t *testing.T) {
	resp, err := newPlugin(coreResource, instanceTypes["inf1.xlarge"]).Allocate(context.Background(), &pluginapi.AllocateRequest{
		ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: ids("neuroncore-", 0, 1)}, {DevicesIds: ids("neuroncore-", 2, 3)}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if a, b := resp.ContainerResponses[0].Envs[VisibleCoresEnv], resp.ContainerResponses[1].Envs[VisibleCoresEnv]; a != "0,1" || b != "2,3" {
		t.Errorf("visible cores %q and %q", a, b)
	}
}

func TestAllocateRejectsUnknownIDs(t *testing.T) {
	topo := instanceTypes["inf2.xlarge"] // 1 device x 2 cores
	for _, tc := range []struct {
		res resource
		ids []string
	}{
		{coreResource, []string{"neuroncore-2"}},             // out of range
		{coreResource, []string{"neuroncore-0", "neuron-0"}}, // the other resource's ID
		{coreResource, []string{"neuroncore-01"}},
		{coreResource, []string{"neuroncore--1"}},
		{coreResource, []string{"bogus"}},
		{coreResource, []string{"neuroncore-1", "neuroncore-1"}}, // repeated
		{coreResource, nil},
		{deviceResource, []string{"neuron-1"}},
		{deviceResource, []string{"neuroncore-0"}},
	} {
		_, err := newPlugin(tc.res, topo).Allocate(context.Background(), &pluginapi.AllocateRequest{
			ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: tc.ids}},
		})
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s %v: err = %v, want InvalidArgument", tc.res.Name, tc.ids, err)
		}
	}
}

func TestParseFlags(t *testing.T) {
	env := func(kv ...string) func(string) string {
		return func(k string) string {
			for i := 0; i < len(kv); i += 2 {
				if kv[i] == k {
					return kv[i+1]
				}
			}
			return ""
		}
	}
	for _, tc := range []struct {
		args []string
		env  func(string) string
		want Topology // zero: an error is expected
	}{
		{[]string{"--instance-type", "inf2.24xlarge"}, env(), Topology{6, 2}},
		{[]string{"--devices", "2", "--cores-per-device", "4"}, env(), Topology{2, 4}},
		{nil, env("NEURON_SIM_INSTANCE_TYPE", "trn1.32xlarge"), Topology{16, 2}},
		{nil, env("NEURON_SIM_DEVICES", "3", "NEURON_SIM_CORES_PER_DEVICE", "2"), Topology{3, 2}},
		{nil, env(), Topology{}},
		{[]string{"--instance-type", "inf2.xlarge", "--devices", "2"}, env(), Topology{}},
		{[]string{"--instance-type", "p4d.24xlarge"}, env(), Topology{}},
		{[]string{"--devices", "2"}, env(), Topology{}},
	} {
		cfg, err := parseFlags(tc.args, tc.env)
		if (err != nil) != (tc.want == Topology{}) || (err == nil && cfg.topo != tc.want) {
			t.Errorf("parseFlags(%v) = %v, %v; want %v", tc.args, cfg.topo, err, tc.want)
		}
		if err == nil && cfg.dir != filepath.Clean(pluginapi.DevicePluginPath) {
			t.Errorf("default dir %q", cfg.dir)
		}
	}
}

// TestInstanceTypesMatchCatalogue keeps the table equal to the operator's catalogue (the single source of truth).
func TestInstanceTypesMatchCatalogue(t *testing.T) {
	src, err := os.ReadFile("../../../operator/neuron_operator/catalogue.py")
	if err != nil {
		t.Skipf("catalogue.py not found (module outside the repository?): %v", err)
	}
	catalogue := map[string]Topology{}
	for _, m := range regexp.MustCompile(`_neuron\("([^"]+)", (\d+), (\d+),`).FindAllStringSubmatch(string(src), -1) {
		d, _ := strconv.Atoi(m[2])
		c, _ := strconv.Atoi(m[3])
		catalogue[m[1]] = Topology{d, c}
	}
	for name, topo := range instanceTypes {
		if catalogue[name] != topo {
			t.Errorf("%s: simulator %v, catalogue.py %v", name, topo, catalogue[name])
		}
	}
}

func ids(prefix string, units ...int) []string {
	out := make([]string, len(units))
	for i, u := range units {
		out[i] = prefix + strconv.Itoa(u)
	}
	return out
}
