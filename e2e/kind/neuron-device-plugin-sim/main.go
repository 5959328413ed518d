// Command neuron-device-plugin-sim is a SIMULATED AWS Neuron device plugin for the project's local kind
// cluster. It is not AWS's (closed-source) plugin, drives no hardware and is never shipped in a release image.
//
// It mimics what the real plugin gives pods (shared/docs/neuron-on-kubernetes.md §1) through the real kubelet
// device-plugin API (v1beta1), so the operator's pods schedule and start as on an EKS Neuron node:
//
//   - two resources, each on its own socket in the kubelet's device-plugin directory, both registered over
//     kubelet.sock: aws.amazon.com/neuroncore (IDs neuroncore-<core>) and aws.amazon.com/neuron (IDs neuron-<device>);
//   - GetPreferredAllocation returns the lowest-index contiguous run (the runtime needs contiguous cores);
//   - Allocate sets NEURON_RT_VISIBLE_CORES to the sorted global core ids ("2,3") and adds /dev/neuron<N> for every
//     device those cores live on. The host side of each device node is /dev/null: a char device every node has,
//     so nothing Neuron-specific is needed on the node, and a runtime opening it gets nothing useful.
//     A whole-device (aws.amazon.com/neuron) request gets all cores of its devices in NEURON_RT_VISIBLE_CORES; the
//     docs leave unverified whether the real plugin sets it for whole devices. Every container also gets
//     NEURON_SIMULATED_DEVICE_PLUGIN=1 so a pod can tell it is on simulated hardware.
//
// On a real node both resources are views of the same hardware. Kubelet accounts them separately and this
// simulator keeps no state across them, so it does NOT prevent double allocation: a pod holding neuroncore-0 and
// another holding neuron-0 both get device 0. Tests that check exclusivity must use one resource name per node.
//
// Topology: --instance-type (a small table mirroring operator/neuron_operator/catalogue.py) or --devices and
// --cores-per-device; the NEURON_SIM_* environment variables are the flag defaults. When kubelet restarts (it
// re-creates kubelet.sock and deletes the plugins' sockets) the plugin restarts its servers and registers again.
// SIGTERM or SIGINT stops it cleanly (exit 0).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

type config struct {
	dir  string        // kubelet device-plugin directory (holds kubelet.sock)
	topo Topology      // simulated hardware
	poll time.Duration // how often to look for a kubelet restart
}

func main() {
	log.SetFlags(log.LstdFlags | log.LUTC)
	cfg, err := parseFlags(os.Args[1:], os.Getenv)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	log.Printf("SIMULATED Neuron device plugin: %d devices x %d cores, directory %s", cfg.topo.Devices, cfg.topo.CoresPerDevice, cfg.dir)
	run(ctx, cfg)
	log.Print("stopped")
}

func parseFlags(args []string, getenv func(string) string) (config, error) {
	envInt := func(name string) int { n, _ := strconv.Atoi(getenv(name)); return n }
	dir := pluginapi.DevicePluginPath
	if d := getenv("NEURON_SIM_DEVICE_PLUGIN_DIR"); d != "" {
		dir = d
	}
	fs := flag.NewFlagSet("neuron-device-plugin-sim", flag.ContinueOnError)
	instance := fs.String("instance-type", getenv("NEURON_SIM_INSTANCE_TYPE"), "simulate this instance type (env NEURON_SIM_INSTANCE_TYPE)")
	devices := fs.Int("devices", envInt("NEURON_SIM_DEVICES"), "Neuron devices on the node (env NEURON_SIM_DEVICES)")
	cores := fs.Int("cores-per-device", envInt("NEURON_SIM_CORES_PER_DEVICE"), "NeuronCores per device (env NEURON_SIM_CORES_PER_DEVICE)")
	fs.StringVar(&dir, "device-plugin-dir", dir, "kubelet device-plugin directory (env NEURON_SIM_DEVICE_PLUGIN_DIR)")
	poll := fs.Duration("poll", time.Second, "how often to check for a kubelet restart")
	if err := fs.Parse(args); err != nil {
		return config{}, err
	}
	if fs.NArg() > 0 {
		return config{}, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	cfg := config{topo: Topology{Devices: *devices, CoresPerDevice: *cores}, poll: *poll}
	if *instance != "" {
		if *devices != 0 || *cores != 0 {
			return config{}, errors.New("give either --instance-type or --devices/--cores-per-device, not both")
		}
		t, ok := instanceTypes[*instance]
		if !ok {
			known := make([]string, 0, len(instanceTypes))
			for name := range instanceTypes {
				known = append(known, name)
			}
			slices.Sort(known)
			return config{}, fmt.Errorf("unknown instance type %q; known: %v", *instance, known)
		}
		cfg.topo = t
	} else if *devices < 1 || *cores < 1 {
		return config{}, errors.New("need --instance-type, or --devices and --cores-per-device (both >= 1)")
	}
	var err error
	cfg.dir, err = filepath.Abs(dir)
	return cfg, err
}

// served is one running plugin: its gRPC server and the socket file it created.
type served struct {
	plugin *plugin
	server *grpc.Server
	path   string
	socket os.FileInfo
}

// run serves both plugins and keeps them registered with kubelet until ctx ends.
func run(ctx context.Context, cfg config) {
	kubeletSock := filepath.Join(cfg.dir, "kubelet.sock")
	for ctx.Err() == nil {
		kubelet, err := os.Stat(kubeletSock)
		if err != nil {
			sleep(ctx, cfg.poll) // kubelet not (yet) up
			continue
		}
		var all []*served
		for _, res := range resources {
			var s *served
			if s, err = serve(cfg, res); err == nil {
				all = append(all, s)
				err = register(ctx, kubeletSock, res)
			}
			if err != nil {
				break
			}
		}
		reason := ""
		if err != nil {
			if ctx.Err() == nil {
				log.Printf("%v; retrying", err)
			}
			sleep(ctx, cfg.poll)
		} else {
			reason = watch(ctx, cfg.poll, kubeletSock, kubelet, all)
		}
		for _, s := range all {
			s.stop()
		}
		if reason != "" {
			log.Printf("%s: restarting and registering again", reason)
		}
	}
}

func serve(cfg config, res resource) (*served, error) {
	path := filepath.Join(cfg.dir, res.Socket)
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false) // stop() removes the file only if it is still ours
	info, err := os.Stat(path)
	if err != nil {
		l.Close()
		return nil, err
	}
	s := &served{plugin: newPlugin(res, cfg.topo), server: grpc.NewServer(), path: path, socket: info}
	pluginapi.RegisterDevicePluginServer(s.server, s.plugin)
	go func() { _ = s.server.Serve(l) }() // returns when stop() closes the listener
	return s, nil
}

func (s *served) stop() {
	close(s.plugin.stop)
	s.server.Stop()
	if info, err := os.Stat(s.path); err == nil && os.SameFile(info, s.socket) {
		os.Remove(s.path)
	}
}

func register(ctx context.Context, kubeletSock string, res resource) error {
	conn, err := grpc.NewClient("unix://"+kubeletSock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err = pluginapi.NewRegistrationClient(conn).Register(ctx, &pluginapi.RegisterRequest{
		Version:      pluginapi.Version,
		Endpoint:     res.Socket,
		ResourceName: res.Name,
		Options:      &pluginapi.DevicePluginOptions{GetPreferredAllocationAvailable: true},
	})
	if err != nil {
		return fmt.Errorf("register %s with kubelet: %w", res.Name, err)
	}
	log.Printf("registered %s (endpoint %s)", res.Name, res.Socket)
	return nil
}

// watch returns why the plugins must restart (kubelet restarted), or "" once ctx ends. A restarting kubelet
// deletes the plugins' sockets and creates a new kubelet.sock; either sign is enough.
func watch(ctx context.Context, poll time.Duration, kubeletSock string, kubelet os.FileInfo, all []*served) string {
	tick := time.NewTicker(poll)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return ""
		case <-tick.C:
		}
		if now, err := os.Stat(kubeletSock); err != nil || !os.SameFile(now, kubelet) || !now.ModTime().Equal(kubelet.ModTime()) {
			return "kubelet.sock was re-created"
		}
		for _, s := range all {
			if now, err := os.Stat(s.path); err != nil || !os.SameFile(now, s.socket) {
				return s.path + " was removed"
			}
		}
	}
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}
