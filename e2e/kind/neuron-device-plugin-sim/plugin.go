package main

import (
	"context"
	"fmt"
	"log"
	"slices"
	"strconv"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

const (
	// VisibleCoresEnv is what the real plugin sets: the container's global core ids, e.g. "2,3".
	VisibleCoresEnv = "NEURON_RT_VISIBLE_CORES"
	// SimulatedEnv lets a pod tell that its "Neuron devices" came from this simulator.
	SimulatedEnv = "NEURON_SIMULATED_DEVICE_PLUGIN"
	// SimulatedHostDevice backs every /dev/neuron<N>: a char device that exists on every node.
	SimulatedHostDevice = "/dev/null"
)

// plugin is the v1beta1 DevicePlugin service for one resource on one simulated topology.
type plugin struct {
	pluginapi.UnimplementedDevicePluginServer
	res  resource
	topo Topology
	stop chan struct{} // closed when the server stops; ends the ListAndWatch streams
}

func newPlugin(res resource, topo Topology) *plugin {
	return &plugin{res: res, topo: topo, stop: make(chan struct{})}
}

func (p *plugin) GetDevicePluginOptions(context.Context, *pluginapi.Empty) (*pluginapi.DevicePluginOptions, error) {
	return &pluginapi.DevicePluginOptions{GetPreferredAllocationAvailable: true}, nil
}

// ListAndWatch sends every unit once, all healthy (simulated hardware never fails), then waits.
func (p *plugin) ListAndWatch(_ *pluginapi.Empty, stream grpc.ServerStreamingServer[pluginapi.ListAndWatchResponse]) error {
	devices := make([]*pluginapi.Device, p.res.Units(p.topo))
	for i := range devices {
		devices[i] = &pluginapi.Device{ID: p.res.ID(i), Health: pluginapi.Healthy}
	}
	if err := stream.Send(&pluginapi.ListAndWatchResponse{Devices: devices}); err != nil {
		return err
	}
	select {
	case <-p.stop:
	case <-stream.Context().Done():
	}
	return nil
}

// GetPreferredAllocation answers with a contiguous run per container (see contiguousRun).
func (p *plugin) GetPreferredAllocation(_ context.Context, req *pluginapi.PreferredAllocationRequest) (*pluginapi.PreferredAllocationResponse, error) {
	resp := &pluginapi.PreferredAllocationResponse{}
	for _, c := range req.ContainerRequests {
		available, err := p.parseAll(c.AvailableDeviceIDs)
		if err != nil {
			return nil, err
		}
		must, err := p.parseAll(c.MustIncludeDeviceIDs)
		if err != nil {
			return nil, err
		}
		ids := []string{}
		for _, u := range contiguousRun(available, must, int(c.AllocationSize)) {
			ids = append(ids, p.res.ID(u))
		}
		resp.ContainerResponses = append(resp.ContainerResponses, &pluginapi.ContainerPreferredAllocationResponse{DeviceIDs: ids})
	}
	return resp, nil
}

// Allocate gives each container its /dev/neuron<N> nodes and NEURON_RT_VISIBLE_CORES. A whole-device
// request gets all cores of its devices (unverified what the real plugin sets; see the package doc).
func (p *plugin) Allocate(_ context.Context, req *pluginapi.AllocateRequest) (*pluginapi.AllocateResponse, error) {
	resp := &pluginapi.AllocateResponse{}
	for _, c := range req.ContainerRequests {
		units, err := p.parseAll(c.DevicesIds)
		if err != nil {
			return nil, err
		}
		if len(units) == 0 {
			return nil, status.Errorf(codes.InvalidArgument, "%s: empty allocation request", p.res.Name)
		}
		var cores, devices []int
		for _, u := range units {
			for _, core := range p.res.CoresOf(u, p.topo) {
				cores = append(cores, core)
				if d := core / p.topo.CoresPerDevice; !slices.Contains(devices, d) {
					devices = append(devices, d)
				}
			}
		}
		slices.Sort(cores)
		slices.Sort(devices)
		coreList := joinInts(cores)
		specs := make([]*pluginapi.DeviceSpec, len(devices))
		paths := make([]string, len(devices))
		for i, d := range devices {
			paths[i] = fmt.Sprintf("/dev/neuron%d", d)
			specs[i] = &pluginapi.DeviceSpec{ContainerPath: paths[i], HostPath: SimulatedHostDevice, Permissions: "rw"}
		}
		resp.ContainerResponses = append(resp.ContainerResponses, &pluginapi.ContainerAllocateResponse{
			Envs:    map[string]string{VisibleCoresEnv: coreList, SimulatedEnv: "1"},
			Devices: specs,
		})
		log.Printf("allocate resource=%s ids=%s %s=%s devices=%s (simulated, host device %s)",
			p.res.Name, strings.Join(c.DevicesIds, ","), VisibleCoresEnv, coreList, strings.Join(paths, ","), SimulatedHostDevice)
	}
	return resp, nil
}

func (p *plugin) PreStartContainer(context.Context, *pluginapi.PreStartContainerRequest) (*pluginapi.PreStartContainerResponse, error) {
	return &pluginapi.PreStartContainerResponse{}, nil
}

// parseAll maps device IDs to unit indices; an unknown or repeated ID is an InvalidArgument error.
func (p *plugin) parseAll(ids []string) ([]int, error) {
	units := make([]int, 0, len(ids))
	for _, id := range ids {
		u, err := p.res.Parse(id, p.topo)
		if err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
		if slices.Contains(units, u) {
			return nil, status.Errorf(codes.InvalidArgument, "%s: device ID %q requested twice", p.res.Name, id)
		}
		units = append(units, u)
	}
	return units, nil
}

func joinInts(xs []int) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = strconv.Itoa(x)
	}
	return strings.Join(s, ",")
}
