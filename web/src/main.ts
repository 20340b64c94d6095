// Entry point of the single-page app served at /ui/.
import "./style.css";
import { startApp } from "./app";

const root = document.getElementById("app");
if (root) startApp(root);
