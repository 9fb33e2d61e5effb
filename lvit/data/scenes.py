"""``Scenes``: ray-cast 3D scenes giving RGB, metric depth and per-pixel semantic labels from one generator.

Three domains stand in for the DPT paper's datasets (train on some, test zero-shot on a held-out one):
``indoor`` rooms (floor, four walls, ceiling, furniture; a lamp), ``outdoor`` terrain with sky (buildings,
trees, rocks; the sun, KITTI-like camera), ``tabletop`` close-ups (a table, a back wall, small objects).

Rendering is vectorised torch over all pixels of a batch: planes, spheres, yawed boxes and vertical capped
cylinders are intersected analytically, the nearest hit is textured procedurally in the object's frame and
lit Lambertian with one shadow ray per pixel. The scene parameters depend only on ``(seed, split, index)``
and never on resolution; pixel rays pass through pixel centres of a resolution-free image plane, so a
render at 2x size samples the same scene (``generate(..., image_size=...)``).

Depth is metric z-depth along the camera's optical axis (as NYUv2 / KITTI store it), not ray length.
Pixels with no surface (sky) or beyond the domain's ``max_depth`` cap have ``valid=False`` and depth 0,
the convention of KITTI's sparse ground truth; their label is still defined (sky, or the far surface).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from lvit.data.seeding import (
    UniformStream,
    as_index_tensor,
    check_split,
    image_hw,
    pixel_grid,
    sample_uniforms,
)

SCENE_CLASSES: tuple[str, ...] = (
    "sky",
    "floor",
    "wall",
    "ceiling",
    "terrain",
    "table",
    "ball",
    "box",
    "cylinder",
    "building",
    "trunk",
    "foliage",
    "rock",
)
_CLS = {name: i for i, name in enumerate(SCENE_CLASSES)}


@dataclass(frozen=True)
class DomainSpec:
    """What a domain looks like to a depth metric: the range every valid depth lies in."""

    name: str
    min_depth: float
    max_depth: float


DOMAIN_SPECS: dict[str, DomainSpec] = {
    "indoor": DomainSpec("indoor", 0.1, 12.0),
    "outdoor": DomainSpec("outdoor", 0.5, 80.0),
    "tabletop": DomainSpec("tabletop", 0.05, 4.0),
}
DOMAINS: tuple[str, ...] = tuple(DOMAIN_SPECS)

# Fixed primitive slots per scene; unused slots are inactive. Slot order = planes, spheres, boxes, cylinders.
N_PLANES, N_SPHERES, N_BOXES, N_CYLINDERS = 6, 6, 6, 6
PLANE, SPHERE, BOX, CYLINDER = range(4)
_SLOTS = ((PLANE, N_PLANES), (SPHERE, N_SPHERES), (BOX, N_BOXES), (CYLINDER, N_CYLINDERS))
N_PRIMS = N_PLANES + N_SPHERES + N_BOXES + N_CYLINDERS
PRIM_TYPE = torch.tensor([kind for kind, count in _SLOTS for _ in range(count)])
_UNIFORMS_PER_SAMPLE = 320
_EPS = 1e-4
_FAR = 1e9


# ----------------------------------------------------------------------------------------------------------
# Scene parameters. ``params`` is a dict of batched tensors:
#   cam_pos (B,3), cam_yaw, cam_pitch, tan_half_fov (B,), light_pos (B,3), ambient (B,), domain (B,) long,
#   max_depth (B,); prim_a (B,M,3): plane normal / centre; prim_b (B,M,3): plane (offset,0,0) /
#   sphere (r,0,0) / box half-extents / cylinder (r, half-height, 0); prim_yaw (B,M); active (B,M) bool;
#   label (B,M) long; color_a, color_b (B,M,3); tex_kind (B,M) long; tex_scale (B,M).


def empty_scene(batch: int) -> dict[str, torch.Tensor]:
    """A batch of scenes with every primitive inactive: fill slots, then ``render_scenes``."""
    zeros = torch.zeros
    return {
        "cam_pos": zeros(batch, 3),
        "cam_yaw": zeros(batch),
        "cam_pitch": zeros(batch),
        "tan_half_fov": torch.ones(batch),
        "light_pos": torch.tensor([0.0, 1e4, 0.0]).repeat(batch, 1),
        "ambient": torch.full((batch,), 0.3),
        "domain": zeros(batch, dtype=torch.long),
        "max_depth": torch.full((batch,), _FAR),
        "prim_a": zeros(batch, N_PRIMS, 3),
        "prim_b": zeros(batch, N_PRIMS, 3),
        "prim_yaw": zeros(batch, N_PRIMS),
        "active": zeros(batch, N_PRIMS, dtype=torch.bool),
        "label": zeros(batch, N_PRIMS, dtype=torch.long),
        "color_a": torch.full((batch, N_PRIMS, 3), 0.5),
        "color_b": torch.full((batch, N_PRIMS, 3), 0.5),
        "tex_kind": zeros(batch, N_PRIMS, dtype=torch.long),
        "tex_scale": torch.ones(batch, N_PRIMS),
    }


def slot(kind: int, k: int) -> int:
    """Index of the ``k``-th primitive slot of type ``kind``."""
    start = sum(count for t, count in _SLOTS if t < kind)
    return start + k


def _set_plane(
    p: dict,
    k: int,
    normal: list[float] | torch.Tensor,
    offset: torch.Tensor | float,
    label: str,
    on: torch.Tensor | bool = True,
) -> None:
    """Plane ``normal . x = offset``, slot ``k``; normal as a constant list or a (B,3) tensor."""
    s = slot(PLANE, k)
    p["prim_a"][:, s] = torch.as_tensor(normal, dtype=torch.float32)
    p["prim_b"][:, s, 0] = torch.as_tensor(offset, dtype=torch.float32)
    p["active"][:, s] = torch.as_tensor(on)
    p["label"][:, s] = _CLS[label]


def _set_object(
    p: dict,
    kind: int,
    k: int,
    center: torch.Tensor,
    size: torch.Tensor,
    label: str | torch.Tensor,
    on: torch.Tensor | bool = True,
    yaw: torch.Tensor | float = 0.0,
) -> None:
    s = slot(kind, k)
    p["prim_a"][:, s] = center
    p["prim_b"][:, s, : size.shape[1]] = size
    p["prim_yaw"][:, s] = torch.as_tensor(yaw, dtype=torch.float32)
    p["active"][:, s] = torch.as_tensor(on)
    p["label"][:, s] = _CLS[label] if isinstance(label, str) else label


def _materials(p: dict, u: UniformStream, scale_low: float, scale_high: float) -> None:
    """Random colours and procedural textures for every slot."""
    batch = p["cam_pos"].shape[0]
    base = u.range(0.15, 0.95, 3 * N_PRIMS).reshape(batch, N_PRIMS, 3)
    p["color_a"] = base
    p["color_b"] = (base * u.range(0.35, 0.8, N_PRIMS)[..., None]).clamp(0, 1)
    p["tex_kind"] = u.integers(4, N_PRIMS)
    p["tex_scale"] = u.range(scale_low, scale_high, N_PRIMS)


def _around_camera(
    p: dict, u: UniformStream, n: int, dist_low: float, dist_high: float, spread: float
) -> torch.Tensor:
    """``(B, n, 2)`` ground (x, z) positions in front of the camera, so most objects are in view."""
    yaw = p["cam_yaw"][:, None] + u.range(-spread, spread, n)
    dist = u.range(dist_low, dist_high, n)
    x = p["cam_pos"][:, None, 0] + dist * torch.sin(yaw)
    z = p["cam_pos"][:, None, 2] + dist * torch.cos(yaw)
    return torch.stack([x, z], -1)


def _clear_of_camera(p: dict, xz: torch.Tensor, reach: torch.Tensor) -> torch.Tensor:
    """Objects whose footprint would contain or graze the camera are switched off."""
    return (xz - p["cam_pos"][:, None, [0, 2]]).norm(dim=-1) > reach + 0.25


def _indoor(u: UniformStream) -> dict[str, torch.Tensor]:
    batch = u.uniforms.shape[0]
    p = empty_scene(batch)
    half_x, half_z, height = u.range(1.5, 4.0)[:, 0], u.range(1.5, 4.0)[:, 0], u.range(2.4, 3.2)[:, 0]
    _set_plane(p, 0, [0.0, 1.0, 0.0], 0.0, "floor")
    _set_plane(p, 1, [0.0, -1.0, 0.0], -height, "ceiling")
    _set_plane(p, 2, [1.0, 0.0, 0.0], -half_x, "wall")
    _set_plane(p, 3, [-1.0, 0.0, 0.0], -half_x, "wall")
    _set_plane(p, 4, [0.0, 0.0, 1.0], -half_z, "wall")
    _set_plane(p, 5, [0.0, 0.0, -1.0], -half_z, "wall")
    p["cam_pos"] = torch.stack(
        [u.range(-0.6, 0.6)[:, 0] * half_x, u.range(1.0, 1.7)[:, 0], u.range(-0.6, 0.6)[:, 0] * half_z], -1
    )
    p["cam_yaw"] = u.range(0, 2 * math.pi)[:, 0]
    p["cam_pitch"] = u.range(-0.45, 0.08)[:, 0]
    p["tan_half_fov"] = torch.tan(u.range(math.radians(55), math.radians(80))[:, 0] / 2)
    p["light_pos"] = torch.stack(
        [u.range(-0.8, 0.8)[:, 0] * half_x, height - 0.15, u.range(-0.8, 0.8)[:, 0] * half_z], -1
    )
    p["ambient"] = u.range(0.2, 0.4)[:, 0]
    wall_room = torch.stack([half_x, half_z], -1)[:, None]

    def place(
        kind: int,
        n: int,
        footprint: torch.Tensor,
        half_height: torch.Tensor,
        size: torch.Tensor,
        label: str,
        yaw: torch.Tensor | float = 0.0,
    ) -> None:
        xz = _around_camera(p, u, n, 1.0, 4.5, 0.8)
        xz = torch.maximum(
            torch.minimum(xz, wall_room - footprint[..., None]), -wall_room + footprint[..., None]
        )
        on = (u.take(n) < 0.7) & _clear_of_camera(p, xz, footprint)
        for k in range(n):
            center = torch.stack([xz[:, k, 0], half_height[:, k], xz[:, k, 1]], -1)
            _set_object(
                p, kind, k, center, size[:, k], label, on[:, k], yaw if isinstance(yaw, float) else yaw[:, k]
            )

    radius = u.range(0.1, 0.4, N_SPHERES)
    place(SPHERE, N_SPHERES, radius, radius, radius[..., None], "ball")
    half = torch.stack(
        [u.range(0.2, 0.7, N_BOXES), u.range(0.2, 0.6, N_BOXES), u.range(0.2, 0.7, N_BOXES)], -1
    )
    place(
        BOX, N_BOXES, half[..., [0, 2]].norm(dim=-1), half[..., 1], half, "box", u.range(0, math.pi, N_BOXES)
    )
    cyl = torch.stack([u.range(0.1, 0.3, N_CYLINDERS), u.range(0.2, 0.8, N_CYLINDERS)], -1)
    place(CYLINDER, N_CYLINDERS, cyl[..., 0], cyl[..., 1], cyl, "cylinder")
    _materials(p, u, 0.15, 0.6)
    return p


def _outdoor(u: UniformStream) -> dict[str, torch.Tensor]:
    batch = u.uniforms.shape[0]
    p = empty_scene(batch)
    _set_plane(p, 0, [0.0, 1.0, 0.0], 0.0, "terrain")
    p["cam_pos"] = torch.stack([torch.zeros(batch), u.range(1.5, 3.0)[:, 0], torch.zeros(batch)], -1)
    p["cam_yaw"] = u.range(0, 2 * math.pi)[:, 0]
    p["cam_pitch"] = u.range(-0.25, 0.05)[:, 0]
    p["tan_half_fov"] = torch.tan(u.range(math.radians(60), math.radians(90))[:, 0] / 2)
    sun_azimuth, sun_elevation = u.range(0, 2 * math.pi)[:, 0], u.range(0.35, 1.2)[:, 0]
    p["light_pos"] = 1e4 * torch.stack(
        [
            torch.cos(sun_elevation) * torch.sin(sun_azimuth),
            torch.sin(sun_elevation),
            torch.cos(sun_elevation) * torch.cos(sun_azimuth),
        ],
        -1,
    )
    p["ambient"] = u.range(0.25, 0.45)[:, 0]
    # Buildings: tall boxes far away.
    xz = _around_camera(p, u, N_BOXES, 15.0, 70.0, 1.0)
    half = torch.stack([u.range(3, 10, N_BOXES), u.range(3, 12, N_BOXES), u.range(3, 10, N_BOXES)], -1)
    on = (u.take(N_BOXES) < 0.7) & _clear_of_camera(p, xz, half[..., [0, 2]].norm(dim=-1))
    yaw = u.range(0, math.pi, N_BOXES)
    for k in range(N_BOXES):
        center = torch.stack([xz[:, k, 0], half[:, k, 1], xz[:, k, 1]], -1)
        _set_object(p, BOX, k, center, half[:, k], "building", on[:, k], yaw[:, k])
    # Trees: a trunk cylinder with a foliage sphere on top (sphere slots 0..2), rocks in sphere slots 3..5.
    n_trees = N_SPHERES // 2
    xz = _around_camera(p, u, n_trees, 4.0, 40.0, 0.9)
    trunk_r, trunk_h, crown = (
        u.range(0.2, 0.5, n_trees),
        u.range(1.5, 3.0, n_trees),
        u.range(1.5, 3.0, n_trees),
    )
    on = (u.take(n_trees) < 0.8) & _clear_of_camera(p, xz, crown)
    for k in range(n_trees):
        _set_object(
            p,
            CYLINDER,
            k,
            torch.stack([xz[:, k, 0], trunk_h[:, k], xz[:, k, 1]], -1),
            torch.stack([trunk_r[:, k], trunk_h[:, k]], -1),
            "trunk",
            on[:, k],
        )
        _set_object(
            p,
            SPHERE,
            k,
            torch.stack([xz[:, k, 0], 2 * trunk_h[:, k] + 0.7 * crown[:, k], xz[:, k, 1]], -1),
            crown[:, k, None],
            "foliage",
            on[:, k],
        )
    xz = _around_camera(p, u, n_trees, 4.0, 30.0, 0.9)
    rock = u.range(0.4, 1.8, n_trees)
    on = (u.take(n_trees) < 0.7) & _clear_of_camera(p, xz, rock)
    for k in range(n_trees):
        _set_object(
            p,
            SPHERE,
            n_trees + k,
            torch.stack([xz[:, k, 0], 0.3 * rock[:, k], xz[:, k, 1]], -1),
            rock[:, k, None],
            "rock",
            on[:, k],
        )
    _materials(p, u, 0.5, 4.0)
    foliage = torch.tensor([0.15, 0.45, 0.12]) * u.range(0.7, 1.3, 1)
    p["color_a"][:, slot(SPHERE, 0) : slot(SPHERE, n_trees)] = foliage[:, None]
    p["color_a"][:, slot(PLANE, 0)] = torch.tensor([0.35, 0.42, 0.2]) * u.range(0.7, 1.3, 1)
    return p


def _tabletop(u: UniformStream) -> dict[str, torch.Tensor]:
    batch = u.uniforms.shape[0]
    p = empty_scene(batch)
    _set_plane(p, 0, [0.0, 1.0, 0.0], 0.0, "table")
    _set_plane(p, 1, [0.0, 0.0, -1.0], -u.range(0.8, 2.5)[:, 0], "wall")
    distance, elevation = u.range(0.4, 1.0)[:, 0], u.range(0.45, 1.1)[:, 0]
    azimuth = u.range(-0.6, 0.6)[:, 0]
    # The camera sits on the -z side and looks at the table centre, so the back wall (+z) closes the view.
    p["cam_pos"] = torch.stack(
        [
            -distance * torch.cos(elevation) * torch.sin(azimuth),
            distance * torch.sin(elevation),
            -distance * torch.cos(elevation) * torch.cos(azimuth),
        ],
        -1,
    )
    p["cam_yaw"], p["cam_pitch"] = azimuth, -elevation
    p["tan_half_fov"] = torch.tan(u.range(math.radians(45), math.radians(65))[:, 0] / 2)
    p["light_pos"] = torch.stack(
        [u.range(-0.6, 0.6)[:, 0], u.range(0.8, 1.5)[:, 0], u.range(-0.6, 0.3)[:, 0]], -1
    )
    p["ambient"] = u.range(0.2, 0.4)[:, 0]

    def spot(n: int) -> torch.Tensor:
        r, phi = 0.3 * u.take(n).sqrt(), u.range(0, 2 * math.pi, n)
        return torch.stack([r * torch.cos(phi), r * torch.sin(phi)], -1)

    xz, radius = spot(N_SPHERES), u.range(0.02, 0.07, N_SPHERES)
    on = u.take(N_SPHERES) < 0.7
    for k in range(N_SPHERES):
        center = torch.stack([xz[:, k, 0], radius[:, k], xz[:, k, 1]], -1)
        _set_object(p, SPHERE, k, center, radius[:, k, None], "ball", on[:, k])
    xz = spot(N_BOXES)
    half = torch.stack(
        [u.range(0.02, 0.08, N_BOXES), u.range(0.015, 0.06, N_BOXES), u.range(0.02, 0.08, N_BOXES)], -1
    )
    on, yaw = u.take(N_BOXES) < 0.7, u.range(0, math.pi, N_BOXES)
    for k in range(N_BOXES):
        center = torch.stack([xz[:, k, 0], half[:, k, 1], xz[:, k, 1]], -1)
        _set_object(p, BOX, k, center, half[:, k], "box", on[:, k], yaw[:, k])
    xz = spot(N_CYLINDERS)
    cyl = torch.stack([u.range(0.02, 0.05, N_CYLINDERS), u.range(0.03, 0.1, N_CYLINDERS)], -1)
    on = u.take(N_CYLINDERS) < 0.7
    for k in range(N_CYLINDERS):
        center = torch.stack([xz[:, k, 0], cyl[:, k, 1], xz[:, k, 1]], -1)
        _set_object(p, CYLINDER, k, center, cyl[:, k], "cylinder", on[:, k])
    _materials(p, u, 0.01, 0.08)
    return p


_DOMAIN_BUILDERS = {"indoor": _indoor, "outdoor": _outdoor, "tabletop": _tabletop}


def scene_parameters(uniforms: torch.Tensor, domains: torch.Tensor) -> dict[str, torch.Tensor]:
    """Batched parameters from per-sample uniforms and ``(B,)`` indices into ``DOMAINS``."""
    params = empty_scene(uniforms.shape[0])
    for d, name in enumerate(DOMAINS):
        rows = (domains == d).nonzero(as_tuple=True)[0]
        if rows.numel():
            built = _DOMAIN_BUILDERS[name](UniformStream(uniforms[rows]))
            built["domain"] = torch.full((rows.numel(),), d)
            built["max_depth"] = torch.full((rows.numel(),), DOMAIN_SPECS[name].max_depth)
            for key, value in built.items():
                params[key][rows] = value
    return params


# ----------------------------------------------------------------------------------------------------------
# Ray casting. Rays: origins (B,N,3) or (B,1,3), directions (B,N,3). Hits: t (B,M,N), +inf where missed.


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(-1)


def _plane_t(o: torch.Tensor, d: torch.Tensor, normal: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    denom = torch.einsum("bnk,bmk->bmn", d, normal)
    num = offset[..., None] - torch.einsum("bnk,bmk->bmn", o, normal)
    t = num / torch.where(denom.abs() < 1e-12, torch.full_like(denom, 1e-12), denom)
    return torch.where(denom.abs() < 1e-12, torch.full_like(t, math.inf), t)


def _nearest_root(b: torch.Tensor, a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Smallest root > _EPS of ``a t^2 + 2 b t + c = 0``; +inf if none."""
    disc = b * b - a * c
    root = torch.sqrt(disc.clamp(min=0))
    near, far = (-b - root) / a, (-b + root) / a
    t = torch.where(near > _EPS, near, far)
    return torch.where((disc >= 0) & (t > _EPS), t, torch.full_like(t, math.inf))


def _sphere_t(o: torch.Tensor, d: torch.Tensor, center: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    oc = o[:, None] - center[:, :, None]  # (B,M,N,3)
    a = _dot(d, d)[:, None]
    return _nearest_root(_dot(oc, d[:, None]), a, _dot(oc, oc) - radius[..., None] ** 2)


def _to_local(
    o: torch.Tensor, d: torch.Tensor, center: torch.Tensor, yaw: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays into each object's frame (translate, then rotate by -yaw about y): (B,M,N,3) each."""
    c, s = torch.cos(yaw)[..., None], torch.sin(yaw)[..., None]

    def rotate(v: torch.Tensor) -> torch.Tensor:
        return torch.stack([c * v[..., 0] - s * v[..., 2], v[..., 1], s * v[..., 0] + c * v[..., 2]], -1)

    return rotate(o[:, None] - center[:, :, None]), rotate(d[:, None].expand(-1, center.shape[1], -1, -1))


def _box_t(
    o: torch.Tensor, d: torch.Tensor, center: torch.Tensor, half: torch.Tensor, yaw: torch.Tensor
) -> torch.Tensor:
    lo, ld = _to_local(o, d, center, yaw)
    inv = 1.0 / torch.where(ld.abs() < 1e-12, torch.full_like(ld, 1e-12), ld)
    t0, t1 = (-half[:, :, None] - lo) * inv, (half[:, :, None] - lo) * inv
    t_enter = torch.minimum(t0, t1).amax(-1)
    t_exit = torch.maximum(t0, t1).amin(-1)
    t = torch.where(t_enter > _EPS, t_enter, t_exit)
    return torch.where((t_enter <= t_exit) & (t > _EPS), t, torch.full_like(t, math.inf))


def _cylinder_t(
    o: torch.Tensor, d: torch.Tensor, center: torch.Tensor, radius: torch.Tensor, half_height: torch.Tensor
) -> torch.Tensor:
    oc = o[:, None] - center[:, :, None]
    dd = d[:, None]
    r2, hh = radius[..., None] ** 2, half_height[..., None]
    a = dd[..., 0] ** 2 + dd[..., 2] ** 2
    b = oc[..., 0] * dd[..., 0] + oc[..., 2] * dd[..., 2]
    c = oc[..., 0] ** 2 + oc[..., 2] ** 2 - r2
    side = _nearest_root(b, a.clamp(min=1e-12), c)
    side = torch.where((oc[..., 1] + side * dd[..., 1]).abs() <= hh, side, torch.full_like(side, math.inf))
    caps = []
    for cap_y in (hh, -hh):
        t = (cap_y - oc[..., 1]) / torch.where(
            dd[..., 1].abs() < 1e-12, torch.full_like(a, 1e-12), dd[..., 1]
        )
        x, z = oc[..., 0] + t * dd[..., 0], oc[..., 2] + t * dd[..., 2]
        caps.append(torch.where((t > _EPS) & (x * x + z * z <= r2), t, torch.full_like(t, math.inf)))
    return torch.minimum(side, torch.minimum(*caps))


def _primitive_t(
    kind: int, o: torch.Tensor, d: torch.Tensor, a: torch.Tensor, b: torch.Tensor, yaw: torch.Tensor
) -> torch.Tensor:
    if kind == PLANE:
        t = _plane_t(o, d, a, b[..., 0])
        return torch.where(t > _EPS, t, torch.full_like(t, math.inf))
    if kind == SPHERE:
        return _sphere_t(o, d, a, b[..., 0])
    if kind == BOX:
        return _box_t(o, d, a, b, yaw)
    return _cylinder_t(o, d, a, b[..., 0], b[..., 1])


def intersect(p: dict[str, torch.Tensor], o: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Ray parameter ``t`` of every primitive, ``(B, M, N)``; +inf where missed or inactive.

    Slots inactive in every scene of the batch are skipped (most scenes use few of the plane slots).
    """
    t = torch.full((d.shape[0], N_PRIMS, d.shape[1]), math.inf, device=d.device)
    used = p["active"].any(0)
    for kind, _ in _SLOTS:
        cols = ((PRIM_TYPE.to(d.device) == kind) & used).nonzero(as_tuple=True)[0]
        if cols.numel():
            t[:, cols] = _primitive_t(
                kind, o, d, p["prim_a"][:, cols], p["prim_b"][:, cols], p["prim_yaw"][:, cols]
            )
    return torch.where(p["active"][..., None], t, torch.full_like(t, math.inf))


def _gather(values: torch.Tensor, hit: torch.Tensor) -> torch.Tensor:
    """Per-ray value of the hit primitive: ``values`` (B,M[,k]), ``hit`` (B,N) -> (B,N[,k])."""
    if values.dim() == 2:
        return torch.gather(values, 1, hit)
    return torch.gather(values, 1, hit[..., None].expand(-1, -1, values.shape[-1]))


def _normals(
    kind: torch.Tensor, a: torch.Tensor, b: torch.Tensor, yaw: torch.Tensor, point: torch.Tensor
) -> torch.Tensor:
    """Outward unit normals at hit points, per the hit primitive's type (all inputs per ray)."""
    local = point - a
    sphere = local
    c, s = torch.cos(yaw), torch.sin(yaw)
    lx, lz = c * local[..., 0] - s * local[..., 2], s * local[..., 0] + c * local[..., 2]
    box_local = torch.stack([lx, local[..., 1], lz], -1) / b.clamp(min=1e-6)
    face = box_local.abs().argmax(-1, keepdim=True)
    box_n = torch.zeros_like(box_local).scatter(-1, face, torch.gather(box_local, -1, face).sign())
    box = torch.stack(
        [c * box_n[..., 0] + s * box_n[..., 2], box_n[..., 1], -s * box_n[..., 0] + c * box_n[..., 2]], -1
    )
    on_cap = local[..., 1].abs() >= b[..., 1] * (1 - 1e-4)
    cylinder = torch.where(
        on_cap[..., None],
        torch.stack([torch.zeros_like(lx), local[..., 1].sign(), torch.zeros_like(lx)], -1),
        torch.stack([local[..., 0], torch.zeros_like(lx), local[..., 2]], -1),
    )
    normal = torch.where((kind == PLANE)[..., None], a, sphere)
    normal = torch.where((kind == BOX)[..., None], box, normal)
    normal = torch.where((kind == CYLINDER)[..., None], cylinder, normal)
    return normal / normal.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def _pattern(kind: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Procedural texture weight in [0, 1] from local 3D coordinates ``q`` (B,N,3)."""
    cells = torch.floor(q / scale[..., None]).sum(-1)
    checker = torch.remainder(cells, 2)
    stripes = (torch.sin(2 * math.pi * (q[..., 0] + q[..., 2]) / scale) > 0).float()
    marble = 0.5 + 0.5 * torch.sin(
        2
        * math.pi
        * (
            q[..., 0]
            + 0.6 * torch.sin(2 * math.pi * q[..., 1] / scale)
            + 0.4 * torch.sin(2 * math.pi * q[..., 2] / (1.7 * scale))
        )
        / scale
    )
    out = torch.zeros_like(checker)
    out = torch.where(kind == 1, checker, out)
    out = torch.where(kind == 2, stripes, out)
    return torch.where(kind == 3, marble, out)


def camera_rays(p: dict[str, torch.Tensor], height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Origins (B,1,3) and directions (B,H*W,3) whose forward component is exactly 1 (so t = z-depth)."""
    gy, gx = pixel_grid(height, width, p["cam_pos"].device)
    yaw, pitch = p["cam_yaw"][:, None], p["cam_pitch"][:, None]
    forward = torch.cat(
        [torch.cos(pitch) * torch.sin(yaw), torch.sin(pitch), torch.cos(pitch) * torch.cos(yaw)], -1
    )
    right = torch.cat([torch.cos(yaw), torch.zeros_like(yaw), -torch.sin(yaw)], -1)
    up = torch.cross(forward, right, dim=-1)
    scale = p["tan_half_fov"][:, None, None]
    sx, sy = gx.reshape(1, -1, 1) * scale, -gy.reshape(1, -1, 1) * scale
    directions = forward[:, None] + sx * right[:, None] + sy * up[:, None]
    return p["cam_pos"][:, None], directions


def render_scenes(p: dict[str, torch.Tensor], height: int, width: int) -> dict[str, torch.Tensor]:
    """Ray-cast a batch: image (B,3,H,W), depth (B,H,W), valid (B,H,W), labels (B,H,W) int64, domain (B,)."""
    batch = p["cam_pos"].shape[0]
    origin, direction = camera_rays(p, height, width)
    t_all = intersect(p, origin, direction)
    t, hit = t_all.min(1)
    hit_any = torch.isfinite(t)
    t = torch.where(hit_any, t, torch.zeros_like(t))
    point = origin + t[..., None] * direction
    kind = PRIM_TYPE.to(hit.device)[hit]
    a, b = _gather(p["prim_a"], hit), _gather(p["prim_b"], hit)
    normal = _normals(kind, a, b, _gather(p["prim_yaw"], hit), point)
    normal = torch.where((_dot(normal, direction) > 0)[..., None], -normal, normal)  # face the camera

    # Texture in the object's frame; for planes keep only the in-plane coordinates (constant offset).
    local = torch.where((kind == PLANE)[..., None], point - a * (_dot(point, a)[..., None] - 0.5), point - a)
    tex_scale = _gather(p["tex_scale"], hit)
    weight = _pattern(_gather(p["tex_kind"], hit), local, tex_scale)[..., None]
    albedo = _gather(p["color_a"], hit) * (1 - weight) + _gather(p["color_b"], hit) * weight

    # Lambertian with one shadow ray towards the (point) light; t in (0, 1) means an occluder in between.
    to_light = p["light_pos"][:, None] - point
    shadow_origin = point + normal * (1e-3 * t.clamp(min=1.0))[..., None]
    blocked = (intersect(p, shadow_origin, p["light_pos"][:, None] - shadow_origin) < 1.0).any(1)
    lambert = (_dot(normal, to_light) / to_light.norm(dim=-1).clamp(min=1e-9)).clamp(min=0)
    ambient = p["ambient"][:, None]
    shade = ambient + (1 - ambient) * lambert * (~blocked).float()
    color = albedo * shade[..., None]

    # Sky: a vertical gradient by ray elevation.
    elevation = (direction[..., 1] / direction.norm(dim=-1)).clamp(-1, 1)[..., None]
    sky = (
        torch.tensor([0.85, 0.9, 0.95], device=t.device) * (1 - elevation)
        + torch.tensor([0.3, 0.5, 0.85], device=t.device) * elevation
    )
    color = torch.where(hit_any[..., None], color, sky)

    labels = torch.where(hit_any, _gather(p["label"], hit), torch.zeros_like(hit))
    valid = hit_any & (t <= p["max_depth"][:, None])
    depth = torch.where(valid, t, torch.zeros_like(t))
    shape = (batch, height, width)
    return {
        "image": color.clamp(0, 1).reshape(batch, height, width, 3).permute(0, 3, 1, 2).contiguous(),
        "depth": depth.reshape(shape),
        "valid": valid.reshape(shape),
        "labels": labels.reshape(shape),
        "domain": p["domain"],
    }


class Scenes(Dataset):
    """Procedural RGB-D-semantic scenes over several domains; any resolution, deterministic by seed.

    ``dataset[i]`` -> dict(image float32 (3,H,W) in [0,1], depth float32 (H,W) metres, valid bool (H,W),
    labels int64 (H,W) indexing ``SCENE_CLASSES``, domain int indexing ``DOMAINS``). Sample ``i`` is of
    domain ``domains[i % len(domains)]``. ``generate(indices, device, image_size)`` renders a batch.
    """

    namespace = "scenes"
    max_rays_per_chunk = 1 << 18  # keeps the (B, primitives, rays) intersection tensors a few hundred MB

    def __init__(
        self,
        split: str = "train",
        num_samples: int = 1_000,
        image_size: int | tuple[int, int] = (128, 128),
        domains: tuple[str, ...] | list[str] = DOMAINS,
        seed: int = 0,
    ) -> None:
        unknown = [d for d in domains if d not in DOMAIN_SPECS]
        if unknown or not domains:
            raise ValueError(f"unknown domains {unknown or domains!r}; valid domains: {', '.join(DOMAINS)}")
        if num_samples < 1:
            raise ValueError(f"num_samples must be positive, got {num_samples}")
        self.split = check_split(split)
        self.num_samples = num_samples
        self.image_size = image_hw(image_size)
        self.domains = tuple(domains)
        self.seed = seed

    def __len__(self) -> int:
        return self.num_samples

    def domain_of(self, indices: torch.Tensor) -> torch.Tensor:
        """Index into ``DOMAINS`` of each sample."""
        ids = torch.tensor([DOMAINS.index(d) for d in self.domains])
        return ids[indices % len(self.domains)]

    def parameters(self, indices: torch.Tensor | list[int]) -> dict[str, torch.Tensor]:
        indices = as_index_tensor(indices, self.num_samples)
        uniforms = sample_uniforms(indices, _UNIFORMS_PER_SAMPLE, self.seed, self.split, self.namespace)
        return scene_parameters(uniforms, self.domain_of(indices))

    def generate(
        self,
        indices: torch.Tensor | list[int],
        device: torch.device | str = "cpu",
        image_size: int | tuple[int, int] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Batched render on ``device`` at ``image_size`` (default: the dataset's); same scene at any size."""
        height, width = image_hw(image_size) if image_size is not None else self.image_size
        params = {k: v.to(device) for k, v in self.parameters(indices).items()}
        chunk = max(1, self.max_rays_per_chunk // (height * width))
        batch = params["cam_pos"].shape[0]
        parts = [
            render_scenes({k: v[i : i + chunk] for k, v in params.items()}, height, width)
            for i in range(0, batch, chunk)
        ]
        return {k: torch.cat([part[k] for part in parts]) for k in parts[0]}

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        sample = {k: v[0] for k, v in self.generate([index]).items()}
        sample["domain"] = int(sample["domain"])
        return sample

    def __repr__(self) -> str:
        return (
            f"Scenes(split={self.split!r}, num_samples={self.num_samples}, image_size={self.image_size}, "
            f"domains={self.domains}, seed={self.seed})"
        )
