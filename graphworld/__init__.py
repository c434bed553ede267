"""graphworld: path-finding tasks on graphs, their base policies and exact rollout enumeration."""
from .enumeration import FAIL, PrefixTree, RolloutSet, enumerate_rollouts, fail_token, is_fail
from .errors import GraphworldError
from .graphs import (check_graph, graph_from_node_link, graph_to_node_link, load_graph, multi_path_prompts,
                     multi_route_dag, path_star, random_dag, require_dag)
from .ood import block_edges, concept_edges, dominant_route, split_prompts
from .policy import STOP, EdgePolicy
from .tasks import Task, is_valid_path, route_of, tasks_of
from .tokens import SPECIALS, Vocab

__all__ = ["FAIL", "STOP", "SPECIALS", "EdgePolicy", "GraphworldError", "PrefixTree", "RolloutSet",
           "Task", "Vocab", "block_edges", "check_graph", "concept_edges", "dominant_route", "enumerate_rollouts", "fail_token",
           "graph_from_node_link", "graph_to_node_link", "is_fail", "is_valid_path", "load_graph",
           "multi_path_prompts", "multi_route_dag", "path_star", "random_dag", "require_dag",
           "route_of", "split_prompts", "tasks_of"]
